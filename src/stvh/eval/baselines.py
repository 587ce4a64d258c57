"""Non-learned and shallow baselines of the quality benchmark, and the label-noise ceiling.

Every baseline gives ±1 codes that are ranked exactly as the models' codes
are (Hamming distance, ties by database order; :mod:`stvh.eval.metrics`), with
the train split as database and the test split as queries (Sec. 6.3):

* **PCA sign codes of mean-pooled RoI features** (:func:`mean_pooled_roi`,
  :func:`pca_sign_codes`): the cached ``roi (N, T, C, s, s)`` of a clip
  averaged over its real persons, frames and RoI cells, centred on the
  database mean and projected on the database's top-K principal directions;
  the code is the sign. Appearance only, no model.
* **Trajectory statistics per court half** (:func:`trajectory_features`,
  :func:`fit_predict_logistic`): per real person, statistics of its box track
  (speed, displacement, box size change, lift), pooled by mean / max / min
  over the persons of each court half; a logistic regression predicts the
  activity and the code is the one of the predicted class
  (:func:`class_codes`). Boxes only, no appearance.
* **Oracle codes** (:func:`oracle_ceiling`): the class code of the *true*
  (clean) activity, scored against the written (possibly noisy) labels. No
  encoder can do better in expectation, since label noise is independent of
  the clip, so this is the ceiling that a cell's label noise allows for
  activity mAP@k and accuracy. The true activity of a synthetic clip is
  recomputed from the generator (:func:`synth_true_activities`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import retrieval_metrics

# Per-person statistics of :func:`person_statistics`, in column order. Lengths are in units of the person's
# median box height (perspective-free), except ``net_distance`` (fraction of the image width).
PERSON_STATS = ("speed_mean", "speed_max", "disp_x", "disp_y", "disp_max", "height_max", "height_min",
                "width_max", "width_min", "top_lift", "foot_lift", "net_distance")
POOLS = ("mean", "max", "min")
HALVES = ("left", "right")


def class_codes(num_classes: int, bits: int) -> np.ndarray:
    """``(num_classes, bits)`` ±1 codes, pairwise at Hamming distance ``bits / 2``: rows 1.. of a Sylvester
    Hadamard matrix (row 0, all ones, is skipped so that no code is constant). ``bits`` must be a power of two
    greater than ``num_classes``."""
    if bits < 2 or bits & (bits - 1):
        raise ValueError(f"bits must be a power of two >= 2, got {bits}")
    if num_classes >= bits:
        raise ValueError(f"{num_classes} classes need more than {bits} bits for equidistant class codes")
    h = np.ones((1, 1), np.int8)
    while h.shape[0] < bits:
        h = np.block([[h, h], [h, -h]])
    return h[1:num_classes + 1].copy()


def mean_pooled_roi(roi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``roi (N, T, C, s, s)``, ``mask (N,)`` -> ``(C,)``: the mean over real persons, frames and RoI cells
    (zeros when the clip has no real person)."""
    roi = np.asarray(roi)
    if roi.ndim != 5:
        raise ValueError(f"expected roi of shape (N, T, C, s, s), got {roi.shape}")
    real = roi[np.asarray(mask, bool)]  # (n, T, C, s, s)
    if not len(real):
        return np.zeros(roi.shape[2], np.float64)
    return real.astype(np.float64).mean(axis=(0, 1, 3, 4))


def pca_sign_codes(database: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """Sign of ``x (n, C)`` centred on the mean of ``database (m, C)`` and projected on its top ``bits``
    principal directions: ``(n, b)`` ±1 with ``b = min(bits, C, m)`` (0 maps to +1). Each direction's sign
    is fixed so that its largest loading is positive (the result does not depend on the SVD's signs)."""
    database, x = np.asarray(database, np.float64), np.asarray(x, np.float64)
    if database.ndim != 2 or x.ndim != 2 or database.shape[1] != x.shape[1]:
        raise ValueError(f"expected (m, C) and (n, C) features, got {database.shape} and {x.shape}")
    mean = database.mean(axis=0)
    _, _, vt = np.linalg.svd(database - mean, full_matrices=False)  # (min(m, C), C)
    vt = vt[:bits]
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return np.where((x - mean) @ vt.T >= 0, 1, -1).astype(np.int8)


def person_statistics(boxes: np.ndarray, image_width: float) -> np.ndarray:
    """``boxes (T, n, 4)`` x1, y1, x2, y2 of n real persons -> ``(n, len(PERSON_STATS))``.

    With h0 / w0 the median box height / width of a person over time and c_t its box centre:
    ``speed_*`` = mean / max of |c_t - c_{t-1}| / h0; ``disp_x``, ``disp_y`` = (c_{T-1} - c_0) / h0;
    ``disp_max`` = max_t |c_t - c_0| / h0; ``height_*`` / ``width_*`` = max / min of h_t / h0, w_t / w0;
    ``top_lift`` = (y1_0 - min_t y1_t) / h0 (raised arms, jumps); ``foot_lift`` = (y2_0 - min_t y2_t) / h0
    (feet off the floor); ``net_distance`` = |mean_t cx_t - W / 2| / W.
    """
    b = np.asarray(boxes, np.float64)
    if b.ndim != 3 or b.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape (T, n, 4), got {b.shape}")
    h, w = b[..., 3] - b[..., 1], b[..., 2] - b[..., 0]                    # (T, n)
    h0 = np.maximum(np.median(h, axis=0), 1e-6)                            # (n,)
    w0 = np.maximum(np.median(w, axis=0), 1e-6)
    c = np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)  # (T, n, 2)
    step = np.linalg.norm(np.diff(c, axis=0), axis=-1) / h0 if len(b) > 1 else np.zeros((1, b.shape[1]))
    disp = (c - c[0]) / h0[:, None]                                        # (T, n, 2)
    cols = [step.mean(0), step.max(0), disp[-1, :, 0], disp[-1, :, 1], np.linalg.norm(disp, axis=-1).max(0),
            (h / h0).max(0), (h / h0).min(0), (w / w0).max(0), (w / w0).min(0),
            (b[0, :, 1] - b[..., 1].min(0)) / h0, (b[0, :, 3] - b[..., 3].min(0)) / h0,
            np.abs(c[..., 0].mean(0) - image_width / 2) / image_width]
    return np.stack(cols, axis=1)


def trajectory_features(boxes: np.ndarray, mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """One clip's descriptor ``(2 * (1 + 3 * len(PERSON_STATS)),)``.

    ``boxes (T, N, 4)``, ``mask (N,)``, ``image_size`` = (H, W). A real person belongs to the left half when
    its mean box centre lies left of W / 2. Layout, per half (left, then right): the number of its persons
    divided by N, then for each pool (mean, max, min over its persons) the :data:`PERSON_STATS`; a half
    without persons gives zeros.
    """
    mask = np.asarray(mask, bool)
    W = float(image_size[1])
    stats = person_statistics(np.asarray(boxes)[:, mask], W)               # (n, S)
    cx = (np.asarray(boxes, np.float64)[:, mask, 0] + np.asarray(boxes, np.float64)[:, mask, 2]).mean(0) / 2
    out = []
    for left in (True, False):
        part = stats[(cx < W / 2) == left]
        out.append([len(part) / max(len(mask), 1)])
        for pool in (np.mean, np.max, np.min):
            out.append(pool(part, axis=0) if len(part) else np.zeros(len(PERSON_STATS)))
    return np.concatenate([np.atleast_1d(np.asarray(v, np.float64)) for v in out])


def trajectory_feature_names() -> list[str]:
    """Column names of :func:`trajectory_features`."""
    return [name for half in HALVES for name in
            [f"{half}/persons"] + [f"{half}/{pool}/{s}" for pool in POOLS for s in PERSON_STATS]]


def fit_predict_logistic(x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, seed: int = 0,
                         c: float = 1.0) -> np.ndarray:
    """Standardise on ``x_train`` (constant columns stay 0), fit a multinomial logistic regression
    (scikit-learn, L2, ``C = c``) and predict the classes of ``x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train)
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"logistic regression needs at least 2 classes in the training labels, got "
                         f"{np.unique(y_train).tolist()}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
    clf.fit(np.asarray(x_train, np.float64), y_train)
    return clf.predict(np.asarray(x, np.float64))


def focus_map(codes: np.ndarray, labels: np.ndarray, database: np.ndarray, queries: np.ndarray,
              k: int = 10) -> float:
    """mAP@k (relevant-count convention) of ``codes[queries]`` against ``codes[database]``, relevant = same
    label; ``database`` and ``queries`` are boolean masks."""
    codes, labels = np.asarray(codes), np.asarray(labels)
    return retrieval_metrics(codes[queries], labels[queries], codes[database], labels[database], (k,))[f"map@{k}"]


def oracle_ceiling(true_activity: np.ndarray, labels: np.ndarray, is_test: np.ndarray, bits: int = 64,
                   num_classes: int | None = None, k: int = 10) -> dict:
    """Best activity mAP@k and accuracy that the label noise allows: codes of the true activity.

    ``true_activity (M,)`` clean ids, ``labels (M,)`` the written ids (-1 = unlabeled, left out as in
    ``stvh eval``), ``is_test (M,)`` bool. Returns ``{"map@{k}": .., "mca": ..}``: mAP@k of
    ``class_codes[true_activity]`` with the test split as queries and the train split as database, and the
    fraction of labelled test clips whose written label is the true one.
    """
    true_activity, labels, is_test = np.asarray(true_activity), np.asarray(labels), np.asarray(is_test, bool)
    n = int(num_classes or max(true_activity.max(), labels.max()) + 1)
    codes = class_codes(n, bits)[true_activity]                       # (M, bits)
    labelled = labels >= 0
    q, db = is_test & labelled, ~is_test & labelled
    return {f"map@{k}": focus_map(codes, labels, db, q, k),
            "mca": float((labels[q] == true_activity[q]).mean()) if q.any() else 0.0}


def synth_true_activities(root: str | Path, clip_ids) -> np.ndarray | None:
    """True activity ids ``(len(clip_ids),)`` of the clips of a dataset written by :mod:`stvh.data.synth`
    (recomputed from its seed and knobs; clip id ``<match>/<key frame>``), or ``None`` when ``root`` holds
    no such dataset (no ``dataset.json`` of this generator, or of another generator version)."""
    from ..data import synth

    path = Path(root) / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != synth.GENERATOR or meta.get("version") != synth.VERSION:
        return None
    seed, per_match = int(meta["seed"]), int(meta["params"]["clips_per_match"])
    cache: dict[int, np.ndarray] = {}
    out = []
    for cid in clip_ids:
        match, key = (int(v) for v in str(cid).split("/"))
        if match not in cache:
            cache[match] = synth.match_activities(seed, match, per_match)
        index, rest = divmod(key - synth.FIRST_KEY, synth.KEY_STEP)
        if rest or not 0 <= index < per_match:
            raise ValueError(f"{path}: clip {cid} is not a clip of this synthetic dataset")
        out.append(int(cache[match][index]))
    return np.asarray(out, np.int64)
