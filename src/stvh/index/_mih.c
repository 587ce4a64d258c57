/*
 * stvh.index._mih -- exact Hamming top-k by multi-index hashing (MIH).
 *
 * Norouzi, Punjani, Fleet, "Fast Exact Search in Hamming Space with
 * Multi-Index Hashing" (arXiv 1307.2982), with three changes (docs/index.md):
 *
 *  - substring tables are sorted arrays, not hash maps: table j holds the
 *    row positions ordered by (substring value, position) and a directory
 *    off[v] .. off[v + 1] of each value v's rows (counting sort, build());
 *  - a substring is any set of s_j <= 24 bits (the Python side spreads the
 *    most variable bits over the tables), given as a byte lookup table
 *    lut[j][byte][value] whose OR over a code's bytes is its substring value
 *    (keys()), and as a bit mask for substring distances;
 *  - the radius grows one table at a time and the search stops as soon as
 *    the k-th best distance is certified: after radius r has been probed in
 *    the first jj + 1 tables (in the query's table order) and r - 1 in the
 *    others, every row at distance <= m * r + jj has been seen (pigeonhole:
 *    an unseen row differs in >= r + 1 bits in jj + 1 substrings and >= r in
 *    the rest).  A row is checked only where it is first reached (the
 *    smallest (substring distance, table rank)), so no "seen" set is kept.
 *    Within a bucket rows come in position order, so once the k-th best is
 *    at distance r (the least any row of the bucket can have) and the row
 *    lies after it, the rest of the bucket cannot enter.
 *
 * Exact, ties in position order -- the same answer as the scan in
 * _hamming.c.  A query whose work (probed keys + checked rows) would exceed
 * its budget stops and is marked (work = -1); the caller answers it by the
 * scan.  Before a ring of buckets (one table, one radius) is read, its row
 * count is summed from the directory: a ring that cannot fit in what is left
 * of the budget sends the query to the scan before the work is spent.
 * Codes of 8 or 16 bytes (K = 64, 128); positions are uint32 (n < 2^32).
 */
#define PY_SSIZE_T_CLEAN
#define STVH_MIH_API_VERSION 1

#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TABLES 8
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 16   /* rows of a bucket read ahead (random reads: keep several misses in flight) */
#endif
#define MAX_SUB_BITS 24

#if defined(__GNUC__) || defined(__clang__)
#define POPCOUNT64(x) __builtin_popcountll(x)
#define PREFETCH(ptr) __builtin_prefetch(ptr)
#define CTZ32(x) __builtin_ctz(x)
#else
#error "stvh.index._mih needs GCC or Clang"
#endif

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ------------------------------------------------------------------ search */

typedef struct { int32_t d; uint32_t p; } hent;   /* max-heap entry, ordered by (d, p) */

static inline int hgt(hent a, hent b) { return a.d > b.d || (a.d == b.d && a.p > b.p); }

static void heap_push(hent *h, Py_ssize_t *hn, Py_ssize_t k, hent e) {
    Py_ssize_t i;
    if (*hn < k) {                         /* sift up */
        i = (*hn)++;
        while (i > 0) {
            Py_ssize_t up = (i - 1) / 2;
            if (!hgt(e, h[up])) break;
            h[i] = h[up];
            i = up;
        }
        h[i] = e;
        return;
    }
    i = 0;                                 /* replace the top, sift down */
    for (;;) {
        Py_ssize_t c = 2 * i + 1;
        if (c >= k) break;
        if (c + 1 < k && hgt(h[c + 1], h[c])) c++;
        if (!hgt(h[c], e)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

static int hent_cmp(const void *a, const void *b) {
    const hent *x = (const hent *)a, *y = (const hent *)b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return x->p < y->p ? -1 : (x->p > y->p);
}

typedef struct {
    const uint8_t *db;          /* (n, nbytes) codes */
    Py_ssize_t nbytes;          /* 8 or 16 */
    int m;                      /* tables */
    int s[MAX_TABLES];          /* bits per table */
    const uint64_t *mask;       /* (m, 2) substring bit masks, per 8-byte word */
    const uint32_t *off[MAX_TABLES];
    const uint32_t *pos[MAX_TABLES];
    Py_ssize_t k;
    Py_ssize_t n;               /* rows in the tables */
    int64_t budget;             /* work units per query before falling back */
} mih_ctx;

/* One query.  Returns the work done, -1 when the budget ran out, -2 when a table points outside the rows
 * (damaged tables: a directory entry beyond n or a position >= n is never read through). */
static int64_t mih_one(const mih_ctx *c, const uint8_t *q, const uint32_t *qk, hent *heap,
                       int64_t *opos, int32_t *odist) {
    const int m = c->m, words = (int)(c->nbytes / 8);
    const Py_ssize_t k = c->k;
    const uint64_t q0 = load64(q), q1 = words > 1 ? load64(q + 8) : 0;
    int order[MAX_TABLES];
    uint64_t mk0[MAX_TABLES], mk1[MAX_TABLES];
    uint32_t size0[MAX_TABLES];
    int maxs = 0;
    for (int j = 0; j < m; j++) {          /* tables by their radius-0 bucket size (smallest first) */
        size0[j] = c->off[j][qk[j] + 1] - c->off[j][qk[j]];
        int i = j;
        while (i > 0 && size0[order[i - 1]] > size0[j]) {
            order[i] = order[i - 1];
            i--;
        }
        order[i] = j;
        if (c->s[j] > maxs) maxs = c->s[j];
    }
    for (int jj = 0; jj < m; jj++) {
        mk0[jj] = c->mask[2 * order[jj]];
        mk1[jj] = c->mask[2 * order[jj] + 1];
    }
    Py_ssize_t hn = 0;
    int64_t work = 0;
    const int64_t budget = c->budget;
    for (int r = 0; r <= maxs; r++) {
        for (int jj = 0; jj < m; jj++) {
            const int j = order[jj], s = c->s[j];
            const uint32_t *off = c->off[j], *pos = c->pos[j];
            if (r <= s) {
                const uint32_t limit = (uint32_t)1 << s;
                const uint32_t first_flip = r == 0 ? 0 : (((uint32_t)1 << r) - 1);
                uint32_t flip = first_flip;
                /* look before reading: when the buckets of this ring hold more rows than the budget has
                   left, the query goes to the scan now instead of after spending its budget */
                int64_t ring = 0;
                while (flip < limit) {
                    const uint32_t key = qk[j] ^ flip;
                    if (off[key] > off[key + 1] || (Py_ssize_t)off[key + 1] > c->n) return -2;
                    ring += (int64_t)(off[key + 1] - off[key]) + 1;
                    if (r == 0 || work + ring > budget) break;
                    uint32_t t = flip | (flip - 1);
                    flip = (t + 1) | (((~t & -~t) - 1) >> (CTZ32(flip) + 1));
                }
                if (work + ring > budget && !(hn == k && heap[0].d <= r)) {
                    return -1;
                }
                flip = first_flip;
                while (flip < limit) {
                    const uint32_t key = qk[j] ^ flip;
                    const uint32_t b = off[key], e = off[key + 1];
                    if (b > e || (Py_ssize_t)e > c->n) return -2;
                    work++;
                    for (uint32_t idx = b; idx < e; idx++) {
                        const uint32_t p = pos[idx];
                        if ((Py_ssize_t)p >= c->n) return -2;
                        if (hn == k && (heap[0].d < r || (heap[0].d == r && p > heap[0].p))) {
                            break;         /* nothing later in this bucket can enter */
                        }
                        if (idx + PREFETCH_ROWS < e && (Py_ssize_t)pos[idx + PREFETCH_ROWS] < c->n) {
                            PREFETCH(c->db + (size_t)pos[idx + PREFETCH_ROWS] * (size_t)c->nbytes);
                        }
                        const uint8_t *x = c->db + (size_t)p * (size_t)c->nbytes;
                        const uint64_t x0 = load64(x) ^ q0, x1 = words > 1 ? load64(x + 8) ^ q1 : 0;
                        int first = 1;     /* is (r, jj) the first place this row is reached? */
                        for (int ii = 0; ii < m; ii++) {
                            if (ii == jj) continue;
                            int sd = POPCOUNT64(x0 & mk0[ii]) + POPCOUNT64(x1 & mk1[ii]);
                            if (sd < r || (sd == r && ii < jj)) {
                                first = 0;
                                break;
                            }
                        }
                        work++;
                        if (first) {
                            hent h = {POPCOUNT64(x0) + POPCOUNT64(x1), p};
                            if (hn < k || hgt(heap[0], h)) {
                                heap_push(heap, &hn, k, h);
                            }
                        }
                        if (work > budget) return -1;
                    }
                    if (work > budget) return -1;
                    if (r == 0) break;
                    /* next s-bit mask with r bits set (Gosper) */
                    uint32_t t = flip | (flip - 1);
                    flip = (t + 1) | (((~t & -~t) - 1) >> (CTZ32(flip) + 1));
                }
            }
            if (hn == k && heap[0].d <= m * r + jj) {
                goto done;
            }
        }
    }
done:
    qsort(heap, (size_t)hn, sizeof(hent), hent_cmp);
    for (Py_ssize_t i = 0; i < hn; i++) {
        opos[i] = heap[i].p;
        odist[i] = heap[i].d;
    }
    for (Py_ssize_t i = hn; i < k; i++) {  /* only when k > n: the caller prevents it */
        opos[i] = -1;
        odist[i] = -1;
    }
    return work;
}

typedef struct {
    const mih_ctx *c;
    const uint8_t *qs;
    const uint32_t *qk;
    Py_ssize_t q0, q1;
    int64_t *opos;
    int32_t *odist;
    int64_t *owork;
    int rc;
} mih_job;

static void *mih_job_run(void *arg) {
    mih_job *jb = (mih_job *)arg;
    const mih_ctx *c = jb->c;
    hent *heap = (hent *)malloc((size_t)c->k * sizeof(hent));
    if (heap == NULL) {
        jb->rc = -1;
        return NULL;
    }
    for (Py_ssize_t i = jb->q0; i < jb->q1; i++) {
        jb->owork[i] = mih_one(c, jb->qs + (size_t)i * (size_t)c->nbytes, jb->qk + (size_t)i * (size_t)c->m,
                               heap, jb->opos + (size_t)i * (size_t)c->k, jb->odist + (size_t)i * (size_t)c->k);
    }
    free(heap);
    jb->rc = 0;
    return NULL;
}

/* ------------------------------------------------------------------ Python helpers */

static int get_buf(PyObject *obj, Py_buffer *v, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (!PyObject_CheckBuffer(obj) || PyObject_GetBuffer(obj, v, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s buffer", what, writable ? ", writable" : "");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ keys() */

PyDoc_STRVAR(keys_doc,
"keys(codes, nbytes, lut, m, out)\n\n"
"Substring values of every code: out[j, i] = OR over bytes b of lut[j, b, codes[i, b]].\n"
"codes: n * nbytes bytes; lut: uint32 (m, nbytes, 256); out: writable uint32 (m, n).");

static PyObject *keys(PyObject *self, PyObject *args) {
    PyObject *co, *lo, *oo;
    Py_ssize_t nbytes, m;
    (void)self;
    if (!PyArg_ParseTuple(args, "OnOnO:keys", &co, &nbytes, &lo, &m, &oo)) return NULL;
    if (nbytes < 1 || m < 1 || m > MAX_TABLES) {
        PyErr_SetString(PyExc_ValueError, "keys: bad nbytes or m");
        return NULL;
    }
    Py_buffer cb, lb, ob;
    if (get_buf(co, &cb, 0, "codes") != 0) return NULL;
    if (get_buf(lo, &lb, 0, "lut") != 0) { PyBuffer_Release(&cb); return NULL; }
    if (get_buf(oo, &ob, 1, "out") != 0) { PyBuffer_Release(&cb); PyBuffer_Release(&lb); return NULL; }
    Py_ssize_t n = cb.len / nbytes;
    PyObject *res = NULL;
    if (cb.len % nbytes || lb.len != m * nbytes * 256 * 4 || ob.len != m * n * 4) {
        PyErr_SetString(PyExc_ValueError, "keys: buffer sizes do not match (codes n*nbytes, lut m*nbytes*256 "
                                          "uint32, out m*n uint32)");
        goto out;
    }
    {
        const uint8_t *codes = (const uint8_t *)cb.buf;
        const uint32_t *lut = (const uint32_t *)lb.buf;
        uint32_t *outk = (uint32_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t j = 0; j < m; j++) {
            const uint32_t *lj = lut + (size_t)j * (size_t)nbytes * 256;
            uint32_t *oj = outk + (size_t)j * (size_t)n;
            for (Py_ssize_t i = 0; i < n; i++) {
                const uint8_t *x = codes + (size_t)i * (size_t)nbytes;
                uint32_t v = 0;
                for (Py_ssize_t b = 0; b < nbytes; b++) v |= lj[b * 256 + x[b]];
                oj[i] = v;
            }
        }
        Py_END_ALLOW_THREADS
    }
    res = Py_None;
    Py_INCREF(res);
out:
    PyBuffer_Release(&cb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&ob);
    return res;
}

/* ------------------------------------------------------------------ build() */

PyDoc_STRVAR(build_doc,
"build(keys, s, out_off, out_pos)\n\n"
"Stable counting sort of one table: keys uint32 (n,) < 2^s; out_off uint32 (2^s + 1,)\n"
"gets the directory, out_pos uint32 (n,) the positions ordered by (key, position).");

static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *ko, *oo, *po;
    int s;
    (void)self;
    if (!PyArg_ParseTuple(args, "OiOO:build", &ko, &s, &oo, &po)) return NULL;
    if (s < 1 || s > MAX_SUB_BITS) {
        PyErr_Format(PyExc_ValueError, "build: substring bits must be in 1..%d, got %d", MAX_SUB_BITS, s);
        return NULL;
    }
    Py_buffer kb, ob, pb;
    if (get_buf(ko, &kb, 0, "keys") != 0) return NULL;
    if (get_buf(oo, &ob, 1, "out_off") != 0) { PyBuffer_Release(&kb); return NULL; }
    if (get_buf(po, &pb, 1, "out_pos") != 0) { PyBuffer_Release(&kb); PyBuffer_Release(&ob); return NULL; }
    PyObject *res = NULL;
    const Py_ssize_t n = kb.len / 4, nv = (Py_ssize_t)1 << s;
    int bad = 0;
    if (kb.len % 4 || ob.len != (nv + 1) * 4 || pb.len != n * 4 || n >= ((Py_ssize_t)1 << 32)) {
        PyErr_SetString(PyExc_ValueError, "build: buffer sizes do not match (keys n uint32 with n < 2^32, "
                                          "out_off 2^s + 1 uint32, out_pos n uint32)");
        goto out;
    }
    {
        const uint32_t *key = (const uint32_t *)kb.buf;
        uint32_t *off = (uint32_t *)ob.buf, *pos = (uint32_t *)pb.buf;
        Py_BEGIN_ALLOW_THREADS
        memset(off, 0, (size_t)(nv + 1) * 4);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (key[i] >= (uint32_t)nv) { bad = 1; break; }
            off[key[i] + 1]++;
        }
        if (!bad) {
            for (Py_ssize_t v = 0; v < nv; v++) off[v + 1] += off[v];
            /* scatter with a moving cursor per value: off[v] is advanced, then shifted back */
            for (Py_ssize_t i = 0; i < n; i++) pos[off[key[i]]++] = (uint32_t)i;
            for (Py_ssize_t v = nv; v > 0; v--) off[v] = off[v - 1];
            off[0] = 0;
        }
        Py_END_ALLOW_THREADS
    }
    if (bad) {
        PyErr_Format(PyExc_ValueError, "build: a key is >= 2^%d", s);
        goto out;
    }
    res = Py_None;
    Py_INCREF(res);
out:
    PyBuffer_Release(&kb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&pb);
    return res;
}

/* ------------------------------------------------------------------ search() */

PyDoc_STRVAR(search_doc,
"search(db, nbytes, sizes, masks, offs, poss, qkeys, queries, k, budget, threads, out_pos, out_dist, out_work)\n\n"
"Exact top-k of each query by multi-index hashing over the first n rows of db (n = len(poss[0])).\n"
"sizes: tuple of m substring bit counts; masks: uint64 (m, 2); offs / poss: tuples of m uint32 buffers;\n"
"qkeys: uint32 (q, m); queries: q * nbytes bytes; out_pos int64 (q, k), out_dist int32 (q, k),\n"
"out_work int64 (q,): work units spent, or -1 where the budget ran out (that row's results are unset).");

static PyObject *search(PyObject *self, PyObject *args) {
    PyObject *dbo, *sizes, *masko, *offs, *poss, *qko, *qo, *opo, *odo, *owo;
    Py_ssize_t nbytes, k, threads;
    long long budget;
    (void)self;
    if (!PyArg_ParseTuple(args, "OnOOOOOOnLnOOO:search", &dbo, &nbytes, &sizes, &masko, &offs, &poss, &qko, &qo,
                          &k, &budget, &threads, &opo, &odo, &owo)) {
        return NULL;
    }
    if (nbytes != 8 && nbytes != 16) {
        PyErr_Format(PyExc_ValueError, "search: codes must be 8 or 16 bytes, got %zd", nbytes);
        return NULL;
    }
    if (!PyTuple_Check(sizes) || !PyTuple_Check(offs) || !PyTuple_Check(poss)) {
        PyErr_SetString(PyExc_TypeError, "search: sizes, offs and poss must be tuples");
        return NULL;
    }
    const Py_ssize_t m = PyTuple_GET_SIZE(sizes);
    if (m < 1 || m > MAX_TABLES || PyTuple_GET_SIZE(offs) != m || PyTuple_GET_SIZE(poss) != m) {
        PyErr_Format(PyExc_ValueError, "search: 1..%d tables, with one directory and one position array each",
                     MAX_TABLES);
        return NULL;
    }
    if (k < 1 || threads < 1 || threads > 64) {
        PyErr_SetString(PyExc_ValueError, "search: k >= 1 and threads in 1..64");
        return NULL;
    }
    mih_ctx c;
    memset(&c, 0, sizeof c);
    c.nbytes = nbytes;
    c.m = (int)m;
    c.k = k;
    c.budget = budget;
    Py_buffer bufs[2 * MAX_TABLES + 6];
    int nbufs = 0;
    PyObject *res = NULL;
    Py_ssize_t n = -1, nq = 0;
#define GET(obj, wr, what) (get_buf((obj), &bufs[nbufs], (wr), (what)) == 0 ? &bufs[nbufs++] : NULL)
    Py_buffer *db = GET(dbo, 0, "db");
    if (db == NULL) goto out;
    Py_buffer *mb = GET(masko, 0, "masks");
    if (mb == NULL) goto out;
    if (mb->len != m * 16) {
        PyErr_SetString(PyExc_ValueError, "search: masks must be uint64 (m, 2)");
        goto out;
    }
    c.mask = (const uint64_t *)mb->buf;
    for (Py_ssize_t j = 0; j < m; j++) {
        long sj = PyLong_AsLong(PyTuple_GET_ITEM(sizes, j));
        if (sj < 1 || sj > MAX_SUB_BITS) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "search: substring bits must be in 1..%d", MAX_SUB_BITS);
            goto out;
        }
        c.s[j] = (int)sj;
        Py_buffer *ob = GET(PyTuple_GET_ITEM(offs, j), 0, "offs[j]");
        if (ob == NULL) goto out;
        Py_buffer *pb = GET(PyTuple_GET_ITEM(poss, j), 0, "poss[j]");
        if (pb == NULL) goto out;
        if (ob->len != (((Py_ssize_t)1 << sj) + 1) * 4 || pb->len % 4 || (n >= 0 && pb->len / 4 != n)) {
            PyErr_SetString(PyExc_ValueError, "search: a table's directory or positions have the wrong size");
            goto out;
        }
        n = pb->len / 4;
        c.off[j] = (const uint32_t *)ob->buf;
        c.pos[j] = (const uint32_t *)pb->buf;
        if (c.off[j][(Py_ssize_t)1 << sj] != (uint32_t)n) {
            PyErr_SetString(PyExc_ValueError, "search: a table's directory does not end at n");
            goto out;
        }
    }
    if (db->len < n * nbytes) {
        PyErr_SetString(PyExc_ValueError, "search: the tables index more rows than db holds");
        goto out;
    }
    if (k > n) {
        PyErr_Format(PyExc_ValueError, "search: k = %zd exceeds the %zd indexed rows", k, n);
        goto out;
    }
    c.db = (const uint8_t *)db->buf;
    c.n = n;
    Py_buffer *qb = GET(qo, 0, "queries");
    if (qb == NULL) goto out;
    nq = qb->len / nbytes;
    Py_buffer *qkb = GET(qko, 0, "qkeys");
    if (qkb == NULL) goto out;
    Py_buffer *opb = GET(opo, 1, "out_pos");
    if (opb == NULL) goto out;
    Py_buffer *odb = GET(odo, 1, "out_dist");
    if (odb == NULL) goto out;
    Py_buffer *owb = GET(owo, 1, "out_work");
    if (owb == NULL) goto out;
#undef GET
    if (qb->len % nbytes || qkb->len != nq * m * 4 || opb->len != nq * k * 8 || odb->len != nq * k * 4
        || owb->len != nq * 8) {
        PyErr_SetString(PyExc_ValueError, "search: query or output buffer sizes do not match");
        goto out;
    }
    for (Py_ssize_t i = 0; i < nq * m; i++) {
        Py_ssize_t j = i % m;
        if (((const uint32_t *)qkb->buf)[i] >= ((uint32_t)1 << c.s[j])) {
            PyErr_SetString(PyExc_ValueError, "search: a query key is out of its table's range");
            goto out;
        }
    }
    {
        int nt = threads > nq ? (int)(nq > 0 ? nq : 1) : (int)threads;
        mih_job jobs[64];
        pthread_t tid[64];
        int started[64] = {0}, rc = 0;
        Py_ssize_t per = (nq + nt - 1) / nt;
        Py_BEGIN_ALLOW_THREADS
        for (int t = 0; t < nt; t++) {
            Py_ssize_t a = (Py_ssize_t)t * per, b = a + per < nq ? a + per : nq;
            jobs[t] = (mih_job){&c, (const uint8_t *)qb->buf, (const uint32_t *)qkb->buf, a < nq ? a : nq, b,
                                (int64_t *)opb->buf, (int32_t *)odb->buf, (int64_t *)owb->buf, 0};
            started[t] = t > 0 && pthread_create(&tid[t], NULL, mih_job_run, &jobs[t]) == 0;
        }
        for (int t = 0; t < nt; t++) if (!started[t]) mih_job_run(&jobs[t]);
        for (int t = 0; t < nt; t++) {
            if (started[t]) pthread_join(tid[t], NULL);
            rc |= jobs[t].rc;
        }
        Py_END_ALLOW_THREADS
        if (rc != 0) {
            PyErr_NoMemory();
            goto out;
        }
    }
    res = Py_None;
    Py_INCREF(res);
out:
    for (int i = 0; i < nbufs; i++) PyBuffer_Release(&bufs[i]);
    return res;
}

static PyMethodDef methods[] = {
    {"keys", keys, METH_VARARGS, keys_doc},
    {"build", build, METH_VARARGS, build_doc},
    {"search", search, METH_VARARGS, search_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mih", "Exact Hamming top-k by multi-index hashing (ties in position order).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mih(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && (PyModule_AddIntConstant(mod, "API_VERSION", STVH_MIH_API_VERSION) != 0
                        || PyModule_AddIntConstant(mod, "MAX_TABLES", MAX_TABLES) != 0
                        || PyModule_AddIntConstant(mod, "MAX_SUB_BITS", MAX_SUB_BITS) != 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
