/*
 * stvh.index._hamming -- exact Hamming top-k over packed binary codes.
 *
 * One function, knn(db, queries, nbytes, k, out_positions, out_distances):
 *
 *   db             C-contiguous buffer of n * nbytes bytes (n packed codes)
 *   queries        C-contiguous buffer of q * nbytes bytes
 *   nbytes         bytes per code (1..1024; 2, 4, 8 and 16 have unrolled and AVX2 loops)
 *   k              >= 1; k' = min(k, n) results per query (no padding)
 *   out_positions  writable buffer of q * k' int64  (row positions, 0-based)
 *   out_distances  writable buffer of q * k' int32
 *
 * returns k'.  Results are sorted by (distance, position): exact distances,
 * ascending, ties in position (insertion) order -- the same answer as a full
 * sort of the brute-force distances.  Errors raise ValueError (TypeError for
 * objects that are not buffers).  The GIL is released during the scan.
 *
 * Algorithm (one pass over the database per query, O(n + k) time, O(k) memory):
 * rows are scanned in position order; a row is kept only if its distance d
 * is below a threshold T.  The kept rows are appended to a buffer (so the
 * buffer is in position order) and counted in a histogram of the K + 1
 * possible distances.  T is the smallest distance such that at least k kept
 * rows have d <= T: a later row with d >= T can never enter the top-k (k
 * earlier rows are at least as close), so T only decreases.  When the buffer
 * fills up it is compacted to the rows with d < T plus the first ones with
 * d == T (exactly k rows).  At the end the buffer is compacted once more and
 * ordered by distance with a stable counting sort, which keeps position
 * order within each distance.  Queries are processed together over blocks
 * of rows so that a batch reads the database from cache once per block.
 *
 * Popcount: AVX2 nibble tables where the CPU has AVX2 (checked at import;
 * simd(False) forces the scalar scan), else __builtin_popcountll; setup.py
 * adds -mpopcnt on x86_64 (one instruction instead of a library call), and
 * the module then refuses to import on a CPU without POPCNT (the Python side
 * falls back to FAISS).  Build with -DSTVH_HAMMING_NO_AVX2 to leave out the
 * AVX2 scans.
 */
#define PY_SSIZE_T_CLEAN
/* bumped on any change of knn()'s signature or semantics; kernel.py ignores other versions */
#define STVH_HAMMING_API_VERSION 2   /* 2: knn() takes an optional thread count */

#include <Python.h>

#include <pthread.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))
#define POPCOUNT64(x) __builtin_popcountll(x)
#define PREFETCH(ptr) __builtin_prefetch(ptr)
#else
#define PREFETCH(ptr) ((void)0)
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define NOINLINE
static int popcount64_portable(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}
#define POPCOUNT64(x) popcount64_portable(x)
#endif

/* Software prefetch this many bytes ahead in the 8- and 16-byte scans (the
 * scalar scans: 16-byte only).  A 1M x 16-byte database does not stay in
 * cache on the reference machine (shared, ~17 GB/s streaming from memory);
 * the prefetch made that scan ~1.4x faster, 8-byte codes ~1.05x, and gave
 * nothing for 2- and 4-byte codes (measured).  A prefetch never faults, so
 * reading ahead past the end of the database is harmless. */
#define PREFETCH_AHEAD 4096
/* the address is computed as an integer: it may lie past the end of the buffer */
#define PREFETCH_AT(ptr, ahead) PREFETCH((const void *)((uintptr_t)(ptr) + (ahead)))

/* ------------------------------------------------------------------ state */

typedef struct {
    int64_t *pos;     /* kept rows, in position order            */
    int32_t *dist;    /* their distances                         */
    int64_t *hist;    /* hist[d]: kept rows at distance d, d <= T */
    Py_ssize_t m;     /* rows in the buffer                      */
    Py_ssize_t lt;    /* kept rows with distance < T             */
    int T;            /* keep a row iff its distance < T         */
} topk_state;

typedef struct {
    Py_ssize_t k;     /* results wanted (<= n)                   */
    Py_ssize_t cap;   /* buffer capacity (> k, or == n)          */
    int bits;         /* 8 * nbytes: distances lie in [0, bits]  */
} topk_params;

/* Keep the rows with d < T and the first (k - lt) rows with d == T. */
static void compact(topk_state *s, const topk_params *p) {
    const int T = s->T;
    Py_ssize_t ties = p->k - s->lt;      /* rows at distance T still wanted */
    Py_ssize_t w = 0;
    if (T > p->bits) {                   /* fewer than k rows seen: keep all */
        return;
    }
    for (Py_ssize_t r = 0; r < s->m; r++) {
        int32_t d = s->dist[r];
        if (d < T || (d == T && ties > 0)) {
            if (d == T) {
                ties--;
            }
            s->pos[w] = s->pos[r];
            s->dist[w] = d;
            w++;
        }
    }
    s->m = w;
    s->hist[T] = p->k - s->lt;
    for (int d = T + 1; d <= p->bits + 1; d++) {
        s->hist[d] = 0;
    }
}

/* Row i at distance d < T enters the buffer; T is lowered as far as possible. */
static NOINLINE void keep_row(topk_state *s, const topk_params *p, int64_t i, int d) {
    if (UNLIKELY(s->m == p->cap)) {
        compact(s, p);
    }
    s->pos[s->m] = i;
    s->dist[s->m] = d;
    s->m++;
    s->hist[d]++;
    s->lt++;
    while (s->lt >= p->k) {              /* count(d <= T - 1) >= k: T - 1 suffices */
        s->T--;
        s->lt -= s->hist[s->T];
    }
}

/* ------------------------------------------------------------------ scans */

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/*
 * Scan rows [r0, r1) for one query.  DIST(ptr) computes the distance of the
 * code at ptr; four rows are tested per branch (the branch is almost never
 * taken once T has settled), then taken rows are handled in position order.
 */
#define DEFINE_SCAN(NAME, NB, QDECL, DIST)                                         \
    static void NAME(topk_state *s, const topk_params *p, const uint8_t *db,       \
                     const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {             \
        QDECL;                                                                      \
        int T = s->T;                                                               \
        Py_ssize_t i = r0;                                                          \
        const uint8_t *c = db + (size_t)r0 * (NB);                                  \
        for (; i + 4 <= r1; i += 4, c += 4 * (NB)) {                                \
            if ((NB) >= 16) { PREFETCH_AT(c, PREFETCH_AHEAD); }                      \
            int d0 = DIST(c), d1 = DIST(c + (NB)), d2 = DIST(c + 2 * (NB)),         \
                d3 = DIST(c + 3 * (NB));                                            \
            if (UNLIKELY(((d0 - T) | (d1 - T) | (d2 - T) | (d3 - T)) < 0)) {  /* some d < T */              \
                if (d0 < T) { keep_row(s, p, i, d0); T = s->T; }                    \
                if (d1 < T) { keep_row(s, p, i + 1, d1); T = s->T; }                \
                if (d2 < T) { keep_row(s, p, i + 2, d2); T = s->T; }                \
                if (d3 < T) { keep_row(s, p, i + 3, d3); T = s->T; }                \
            }                                                                       \
        }                                                                           \
        for (; i < r1; i++, c += (NB)) {                                            \
            int d = DIST(c);                                                        \
            if (d < T) { keep_row(s, p, i, d); T = s->T; }                          \
        }                                                                           \
    }

#define Q2 const uint32_t q0 = load16(qp)
#define D2(ptr) POPCOUNT64((uint64_t)(load16(ptr) ^ q0))
DEFINE_SCAN(scan2, 2, Q2, D2)

#define Q4 const uint32_t q0 = load32(qp)
#define D4(ptr) POPCOUNT64((uint64_t)(load32(ptr) ^ q0))
DEFINE_SCAN(scan4, 4, Q4, D4)

#define Q8 const uint64_t q0 = load64(qp)
#define D8(ptr) POPCOUNT64(load64(ptr) ^ q0)
DEFINE_SCAN(scan8, 8, Q8, D8)

#define Q16 const uint64_t q0 = load64(qp), q1 = load64(qp + 8)
#define D16(ptr) (POPCOUNT64(load64(ptr) ^ q0) + POPCOUNT64(load64((ptr) + 8) ^ q1))
DEFINE_SCAN(scan16, 16, Q16, D16)

/* Any other code size: 8-byte words, then the remaining bytes. */
static void scan_generic(topk_state *s, const topk_params *p, const uint8_t *db,
                         const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {
    const size_t nb = (size_t)(p->bits / 8);
    const size_t words = nb / 8;
    int T = s->T;
    for (Py_ssize_t i = r0; i < r1; i++) {
        const uint8_t *c = db + (size_t)i * nb;
        int d = 0;
        size_t j = 0;
        for (; j < words; j++) {
            d += POPCOUNT64(load64(c + 8 * j) ^ load64(qp + 8 * j));
        }
        for (j *= 8; j < nb; j++) {
            d += POPCOUNT64((uint64_t)(c[j] ^ qp[j]));
        }
        if (d < T) {
            keep_row(s, p, i, d);
            T = s->T;
        }
    }
}

typedef void (*scan_fn)(topk_state *, const topk_params *, const uint8_t *, const uint8_t *,
                        Py_ssize_t, Py_ssize_t);

/*
 * AVX2 scans (x86-64 with GCC or Clang; chosen at run time when the CPU has
 * AVX2).  Per 32-byte register: XOR with the query, popcount of each byte
 * with a 16-entry nibble table (vpshufb), then the byte counts are summed
 * per code (16-bit lanes for 2-byte codes, 32-bit for 4, 64-bit for 8 and
 * 16) and compared with T in one vector compare.  A block with any row
 * below T (rare once T has settled) is rescanned by the scalar code, which
 * keeps the rows in position order.
 */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(STVH_HAMMING_NO_AVX2)
#define HAVE_AVX2_SCANS 1
#include <immintrin.h>
#define TARGET_AVX2 __attribute__((target("avx2,popcnt")))

TARGET_AVX2 static inline __m256i byte_popcounts(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

TARGET_AVX2 static inline __m256i loadu256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 2-byte codes: 16 per register, distances in 16-bit lanes; 32 rows per step. */
TARGET_AVX2 static void scan2_avx2(topk_state *s, const topk_params *p, const uint8_t *db,
                                   const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {
    const __m256i qv = _mm256_set1_epi16((short)load16(qp));
    const __m256i ones = _mm256_set1_epi8(1);
    Py_ssize_t i = r0;
    __m256i tv = _mm256_set1_epi16((short)s->T);
    for (; i + 32 <= r1; i += 32) {
        const uint8_t *c = db + (size_t)i * 2;
        __m256i a = _mm256_maddubs_epi16(byte_popcounts(_mm256_xor_si256(loadu256(c), qv)), ones);
        __m256i b = _mm256_maddubs_epi16(byte_popcounts(_mm256_xor_si256(loadu256(c + 32), qv)), ones);
        __m256i m = _mm256_or_si256(_mm256_cmpgt_epi16(tv, a), _mm256_cmpgt_epi16(tv, b));
        if (UNLIKELY(!_mm256_testz_si256(m, m))) {
            scan2(s, p, db, qp, i, i + 32);
            tv = _mm256_set1_epi16((short)s->T);
        }
    }
    scan2(s, p, db, qp, i, r1);
}

/* 4-byte codes: 8 per register, distances in 32-bit lanes; 16 rows per step. */
TARGET_AVX2 static void scan4_avx2(topk_state *s, const topk_params *p, const uint8_t *db,
                                   const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {
    const __m256i qv = _mm256_set1_epi32((int)load32(qp));
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    Py_ssize_t i = r0;
    __m256i tv = _mm256_set1_epi32(s->T);
    for (; i + 16 <= r1; i += 16) {
        const uint8_t *c = db + (size_t)i * 4;
        __m256i a = byte_popcounts(_mm256_xor_si256(loadu256(c), qv));
        __m256i b = byte_popcounts(_mm256_xor_si256(loadu256(c + 32), qv));
        a = _mm256_madd_epi16(_mm256_maddubs_epi16(a, ones8), ones16);
        b = _mm256_madd_epi16(_mm256_maddubs_epi16(b, ones8), ones16);
        __m256i m = _mm256_or_si256(_mm256_cmpgt_epi32(tv, a), _mm256_cmpgt_epi32(tv, b));
        if (UNLIKELY(!_mm256_testz_si256(m, m))) {
            scan4(s, p, db, qp, i, i + 16);
            tv = _mm256_set1_epi32(s->T);
        }
    }
    scan4(s, p, db, qp, i, r1);
}

/* 8-byte codes: 4 per register, distances in 64-bit lanes (vpsadbw); 8 rows per step. */
TARGET_AVX2 static void scan8_avx2(topk_state *s, const topk_params *p, const uint8_t *db,
                                   const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {
    const __m256i qv = _mm256_set1_epi64x((long long)load64(qp));
    const __m256i zero = _mm256_setzero_si256();
    Py_ssize_t i = r0;
    __m256i tv = _mm256_set1_epi64x(s->T);
    for (; i + 8 <= r1; i += 8) {
        const uint8_t *c = db + (size_t)i * 8;
        PREFETCH_AT(c, PREFETCH_AHEAD);
        __m256i a = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c), qv)), zero);
        __m256i b = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c + 32), qv)), zero);
        __m256i m = _mm256_or_si256(_mm256_cmpgt_epi64(tv, a), _mm256_cmpgt_epi64(tv, b));
        if (UNLIKELY(!_mm256_testz_si256(m, m))) {
            scan8(s, p, db, qp, i, i + 8);
            tv = _mm256_set1_epi64x(s->T);
        }
    }
    scan8(s, p, db, qp, i, r1);
}

/* 16-byte codes: 2 per register; the two 64-bit halves are added across two registers. */
TARGET_AVX2 static void scan16_avx2(topk_state *s, const topk_params *p, const uint8_t *db,
                                    const uint8_t *qp, Py_ssize_t r0, Py_ssize_t r1) {
    const __m256i qv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qp));
    const __m256i zero = _mm256_setzero_si256();
    Py_ssize_t i = r0;
    __m256i tv = _mm256_set1_epi64x(s->T);
    for (; i + 8 <= r1; i += 8) {
        const uint8_t *c = db + (size_t)i * 16;
        PREFETCH_AT(c, PREFETCH_AHEAD);
        PREFETCH_AT(c, PREFETCH_AHEAD + 64);
        /* rows (0,1), (2,3), (4,5), (6,7): 64-bit lanes [lo, hi] of each row */
        __m256i a = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c), qv)), zero);
        __m256i b = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c + 32), qv)), zero);
        __m256i e = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c + 64), qv)), zero);
        __m256i f = _mm256_sad_epu8(byte_popcounts(_mm256_xor_si256(loadu256(c + 96), qv)), zero);
        __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
        __m256i ef = _mm256_add_epi64(_mm256_unpacklo_epi64(e, f), _mm256_unpackhi_epi64(e, f));
        __m256i m = _mm256_or_si256(_mm256_cmpgt_epi64(tv, ab), _mm256_cmpgt_epi64(tv, ef));
        if (UNLIKELY(!_mm256_testz_si256(m, m))) {
            scan16(s, p, db, qp, i, i + 8);
            tv = _mm256_set1_epi64x(s->T);
        }
    }
    scan16(s, p, db, qp, i, r1);
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}
#else
#define HAVE_AVX2_SCANS 0
static int cpu_has_avx2(void) { return 0; }
#endif

static int use_avx2 = 0;   /* set at import: the CPU has AVX2 (and it is not disabled) */

/* Final compaction and stable counting sort by distance into the outputs;
 * count is scratch for bits + 2 counters. */
static void finish(topk_state *s, const topk_params *p, Py_ssize_t *count, int64_t *opos, int32_t *odist) {
    compact(s, p);
    /* now s->m == k and every kept distance is <= min(T, bits) */
    const int top = s->T < p->bits ? s->T : p->bits;
    memset(count, 0, sizeof(Py_ssize_t) * ((size_t)top + 2));
    for (Py_ssize_t r = 0; r < s->m; r++) {
        count[s->dist[r] + 1]++;
    }
    for (int d = 1; d <= top + 1; d++) {      /* count[d]: first output slot of distance d */
        count[d] += count[d - 1];
    }
    for (Py_ssize_t r = 0; r < s->m; r++) {   /* in buffer (= position) order: stable */
        Py_ssize_t w = count[s->dist[r]]++;
        opos[w] = s->pos[r];
        odist[w] = s->dist[r];
    }
}

/*
 * The whole search, without the GIL.  Returns 0, or -1 when out of memory.
 * Queries are processed in chunks; within a chunk, the database is read in
 * blocks of rows and every query of the chunk scans the block.
 */
#define QUERY_CHUNK 64
#define BLOCK_BYTES (64 * 1024)
#define BUFFER_ROWS_PER_CHUNK ((Py_ssize_t)1 << 22)   /* fewer queries per chunk for a large k */

static int search_all(const uint8_t *db, Py_ssize_t n, const uint8_t *qs, Py_ssize_t nq,
                      Py_ssize_t nbytes, Py_ssize_t k, int64_t *opos, int32_t *odist) {
    topk_params p;
    p.k = k;
    p.bits = (int)(8 * nbytes);
    p.cap = 2 * k + 1024;
    if (p.cap > n) {
        p.cap = n;
    }
    scan_fn scan = nbytes == 2 ? scan2 : nbytes == 4 ? scan4 : nbytes == 8 ? scan8
                 : nbytes == 16 ? scan16 : scan_generic;
#if HAVE_AVX2_SCANS
    if (use_avx2) {
        scan = nbytes == 2 ? scan2_avx2 : nbytes == 4 ? scan4_avx2 : nbytes == 8 ? scan8_avx2
             : nbytes == 16 ? scan16_avx2 : scan;
    }
#endif
    Py_ssize_t chunk = nq < QUERY_CHUNK ? nq : QUERY_CHUNK;
    if (chunk > 1 && chunk * p.cap > BUFFER_ROWS_PER_CHUNK) {
        chunk = BUFFER_ROWS_PER_CHUNK / p.cap > 1 ? BUFFER_ROWS_PER_CHUNK / p.cap : 1;
    }
    Py_ssize_t block = BLOCK_BYTES / nbytes;
    if (block < 256) {
        block = 256;
    }
    if (chunk == 1) {
        block = n;     /* one query: no blocking needed */
    }
    const size_t nh = (size_t)p.bits + 2;
    topk_state *st = (topk_state *)calloc((size_t)chunk, sizeof(topk_state));
    int64_t *pos = (int64_t *)malloc((size_t)chunk * (size_t)p.cap * sizeof(int64_t));
    int32_t *dist = (int32_t *)malloc((size_t)chunk * (size_t)p.cap * sizeof(int32_t));
    int64_t *hist = (int64_t *)malloc((size_t)chunk * nh * sizeof(int64_t));
    Py_ssize_t *count = (Py_ssize_t *)malloc(nh * sizeof(Py_ssize_t));
    int rc = 0;
    if (st == NULL || pos == NULL || dist == NULL || hist == NULL || count == NULL) {
        rc = -1;
        goto done;
    }
    for (Py_ssize_t q0 = 0; q0 < nq; q0 += chunk) {
        Py_ssize_t qn = nq - q0 < chunk ? nq - q0 : chunk;
        for (Py_ssize_t j = 0; j < qn; j++) {
            st[j].pos = pos + (size_t)j * (size_t)p.cap;
            st[j].dist = dist + (size_t)j * (size_t)p.cap;
            st[j].hist = hist + (size_t)j * nh;
            memset(st[j].hist, 0, nh * sizeof(int64_t));
            st[j].m = 0;
            st[j].lt = 0;
            st[j].T = p.bits + 1;
        }
        for (Py_ssize_t r0 = 0; r0 < n; r0 += block) {
            Py_ssize_t r1 = n - r0 < block ? n : r0 + block;
            for (Py_ssize_t j = 0; j < qn; j++) {
                scan(&st[j], &p, db, qs + (size_t)(q0 + j) * (size_t)nbytes, r0, r1);
            }
        }
        for (Py_ssize_t j = 0; j < qn; j++) {
            finish(&st[j], &p, count, opos + (size_t)(q0 + j) * (size_t)k,
                   odist + (size_t)(q0 + j) * (size_t)k);
        }
    }
done:
    free(st);
    free(pos);
    free(dist);
    free(hist);
    free(count);
    return rc;
}

/*
 * search_all over `threads` POSIX threads, each taking a contiguous range of
 * queries (its own buffers; the database is shared read-only).  A batch of
 * queries is split so that every thread gets whole QUERY_CHUNKs where it can.
 */
typedef struct {
    const uint8_t *db, *qs;
    Py_ssize_t n, nq, nbytes, k;
    int64_t *opos;
    int32_t *odist;
    int rc;
} scan_job;

static void *scan_job_run(void *arg) {
    scan_job *j = (scan_job *)arg;
    j->rc = search_all(j->db, j->n, j->qs, j->nq, j->nbytes, j->k, j->opos, j->odist);
    return NULL;
}

static int search_threads(const uint8_t *db, Py_ssize_t n, const uint8_t *qs, Py_ssize_t nq,
                          Py_ssize_t nbytes, Py_ssize_t k, int64_t *opos, int32_t *odist, int threads) {
    if (threads > nq) {
        threads = (int)nq;
    }
    if (threads <= 1) {
        return search_all(db, n, qs, nq, nbytes, k, opos, odist);
    }
    scan_job jobs[64];
    pthread_t tid[64];
    int started[64] = {0};
    if (threads > 64) {
        threads = 64;
    }
    Py_ssize_t per = (nq + threads - 1) / threads, q0 = 0;
    int rc = 0;
    for (int t = 0; t < threads; t++, q0 += per) {
        Py_ssize_t cnt = q0 >= nq ? 0 : (nq - q0 < per ? nq - q0 : per);
        jobs[t] = (scan_job){db, qs + (size_t)q0 * (size_t)nbytes, n, cnt, nbytes, k,
                             opos + (size_t)q0 * (size_t)k, odist + (size_t)q0 * (size_t)k, 0};
        if (cnt == 0) {
            continue;
        }
        if (t == 0 || pthread_create(&tid[t], NULL, scan_job_run, &jobs[t]) != 0) {
            started[t] = 0;    /* thread 0 (and any that could not start) runs below, in this thread */
        } else {
            started[t] = 1;
        }
    }
    for (int t = 0; t < threads; t++) {
        if (!started[t] && jobs[t].nq > 0) {
            scan_job_run(&jobs[t]);
        }
    }
    for (int t = 0; t < threads; t++) {
        if (started[t]) {
            pthread_join(tid[t], NULL);
        }
        rc |= jobs[t].rc;
    }
    return rc;
}

/* ------------------------------------------------------------------ Python */

/* A signed-integer buffer format of the given item size ("q", "<l", "=i", ...). */
static int is_signed_int_format(const char *fmt, Py_ssize_t itemsize, Py_ssize_t want) {
    if (fmt == NULL || itemsize != want) {
        return 0;
    }
    if (*fmt == '@' || *fmt == '=' || *fmt == '<' || *fmt == '>' || *fmt == '!') {
        if (*fmt == '>' || *fmt == '!') {
#if PY_BIG_ENDIAN
            fmt++;
#else
            return 0;
#endif
        } else {
            fmt++;
        }
    }
    if (fmt[0] == '\0' || fmt[1] != '\0') {
        return 0;
    }
    return strchr("bhilq", fmt[0]) != NULL;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int flags, const char *what) {
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object (buffer protocol), got %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s buffer", what,
                     (flags & PyBUF_WRITABLE) ? ", writable" : "");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(knn_doc,
"knn(db, queries, nbytes, k, out_positions, out_distances, threads=1) -> int\n"
"\n"
"Exact Hamming top-k of each query over the database; returns k' = min(k, n).\n"
"\n"
"db: C-contiguous buffer of n codes of nbytes bytes; queries: q codes of nbytes\n"
"bytes; out_positions: writable C-contiguous int64 buffer of q * k' items;\n"
"out_distances: writable C-contiguous int32 buffer of q * k' items.  Row i of\n"
"the outputs holds query i's k' nearest rows (0-based positions) and their\n"
"distances, ascending by (distance, position): ties in position order.\n"
"threads (1..64): queries are split over that many threads (same results).");

static PyObject *knn(PyObject *self, PyObject *args) {
    PyObject *dbo, *qo, *po, *dobj;
    Py_ssize_t nbytes, k, threads = 1;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOnnOO|n:knn", &dbo, &qo, &nbytes, &k, &po, &dobj, &threads)) {
        return NULL;
    }
    if (threads < 1 || threads > 64) {
        PyErr_Format(PyExc_ValueError, "threads must be in 1..64, got %zd", threads);
        return NULL;
    }
    if (nbytes < 1 || nbytes > 1024) {
        PyErr_Format(PyExc_ValueError, "nbytes (bytes per code) must be in 1..1024, got %zd", nbytes);
        return NULL;
    }
    if (k < 1) {
        PyErr_Format(PyExc_ValueError, "k must be a positive integer, got %zd", k);
        return NULL;
    }
    Py_buffer db, qs, op, od;
    if (get_buffer(dbo, &db, PyBUF_C_CONTIGUOUS, "db") != 0) {
        return NULL;
    }
    if (get_buffer(qo, &qs, PyBUF_C_CONTIGUOUS, "queries") != 0) {
        PyBuffer_Release(&db);
        return NULL;
    }
    if (get_buffer(po, &op, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT, "out_positions") != 0) {
        PyBuffer_Release(&db);
        PyBuffer_Release(&qs);
        return NULL;
    }
    if (get_buffer(dobj, &od, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT, "out_distances") != 0) {
        PyBuffer_Release(&db);
        PyBuffer_Release(&qs);
        PyBuffer_Release(&op);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = db.len / nbytes, nq = qs.len / nbytes, kk = k < n ? k : n;
    int rc = 0;
    if (db.len % nbytes != 0) {
        PyErr_Format(PyExc_ValueError, "db holds %zd bytes, not a whole number of %zd-byte codes",
                     db.len, nbytes);
        goto out;
    }
    if (qs.len % nbytes != 0) {
        PyErr_Format(PyExc_ValueError, "queries hold %zd bytes, not a whole number of %zd-byte codes",
                     qs.len, nbytes);
        goto out;
    }
    if (!is_signed_int_format(op.format, op.itemsize, 8)) {
        PyErr_Format(PyExc_ValueError, "out_positions must be an int64 buffer, got format %s (itemsize %zd)",
                     op.format ? op.format : "?", op.itemsize);
        goto out;
    }
    if (!is_signed_int_format(od.format, od.itemsize, 4)) {
        PyErr_Format(PyExc_ValueError, "out_distances must be an int32 buffer, got format %s (itemsize %zd)",
                     od.format ? od.format : "?", od.itemsize);
        goto out;
    }
    if (kk > 0 && nq > PY_SSIZE_T_MAX / 8 / kk) {
        PyErr_Format(PyExc_ValueError, "q * min(k, n) = %zd * %zd results are too many", nq, kk);
        goto out;
    }
    if (op.len != nq * kk * 8) {
        PyErr_Format(PyExc_ValueError, "out_positions must hold q * min(k, n) = %zd * %zd int64, got %zd",
                     nq, kk, op.len / 8);
        goto out;
    }
    if (od.len != nq * kk * 4) {
        PyErr_Format(PyExc_ValueError, "out_distances must hold q * min(k, n) = %zd * %zd int32, got %zd",
                     nq, kk, od.len / 4);
        goto out;
    }
    if (kk > 0 && nq > 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = search_threads((const uint8_t *)db.buf, n, (const uint8_t *)qs.buf, nq, nbytes, kk,
                            (int64_t *)op.buf, (int32_t *)od.buf, (int)threads);
        Py_END_ALLOW_THREADS
        if (rc != 0) {
            PyErr_NoMemory();
            goto out;
        }
    }
    result = PyLong_FromSsize_t(kk);
out:
    PyBuffer_Release(&db);
    PyBuffer_Release(&qs);
    PyBuffer_Release(&op);
    PyBuffer_Release(&od);
    return result;
}

PyDoc_STRVAR(simd_doc,
"simd(enable=None) -> str\n"
"\n"
"The scan in use: \"avx2\" or \"scalar\".  enable=False forces the scalar scan,\n"
"enable=True the AVX2 scan where the CPU has it (for tests and benchmarks).");

static PyObject *simd(PyObject *self, PyObject *args) {
    PyObject *enable = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "|O:simd", &enable)) {
        return NULL;
    }
    if (enable != Py_None) {
        int on = PyObject_IsTrue(enable);
        if (on < 0) {
            return NULL;
        }
        use_avx2 = on && HAVE_AVX2_SCANS && cpu_has_avx2();
    }
    return PyUnicode_FromString(use_avx2 ? "avx2" : "scalar");
}

static PyMethodDef methods[] = {
    {"knn", knn, METH_VARARGS, knn_doc},
    {"simd", simd, METH_VARARGS, simd_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hamming",
    "Exact Hamming top-k over packed binary codes (ties in position order).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hamming(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__POPCNT__) && (defined(__GNUC__) || defined(__clang__))
    /* built with -mpopcnt: refuse to load (the caller falls back) on a CPU without it */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt")) {
        PyErr_SetString(PyExc_ImportError, "stvh.index._hamming was built with -mpopcnt, "
                                           "but this CPU has no POPCNT instruction");
        return NULL;
    }
#endif
    use_avx2 = HAVE_AVX2_SCANS && cpu_has_avx2();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API_VERSION", STVH_HAMMING_API_VERSION) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
