"""Person detectors for ``stvh track``: an ONNX model the user brings, or OpenCV's HOG people detector.

``load_detector(spec, **opts)`` takes a path to an ``.onnx`` file or ``"hog"`` and returns a
:class:`Detector`; ``detector(frame)`` maps one ``(H, W, 3)`` uint8 RGB frame to person boxes
``(n, 4)`` x1y1x2y2 in frame pixels (clipped to the frame) and scores ``(n,)``.

ONNX models (run with onnxruntime on the CPU) may give one of three output layouts, told apart by
the shape of their first output (``--layout`` forces one):

* ``yolov8`` ``(1, 4 + C, N)``: ``cx, cy, w, h`` then C class scores (YOLOv8/v11; no objectness);
* ``yolov5`` ``(1, N, 5 + C)``: ``cx, cy, w, h, objectness`` then C class scores (score = obj x class);
* ``xyxy``  ``(1, N, 6)``: rows ``x1, y1, x2, y2, score, class`` (models with NMS inside).

Auto-detection: a last dimension of 6 is ``xyxy`` (a one-class YOLOv5 model needs ``--layout yolov5``),
else a middle dimension smaller than the last is ``yolov8``, else ``yolov5``. Coordinates are pixels
of the model input (the letterboxed image). A candidate's class is its best class score; candidates
of the person class at or above the score threshold are kept, class-wise NMS removes
overlaps (OpenCV's NMSBoxesBatched), and the boxes are mapped back through the letterbox to the frame and clipped.

Input: the model's static input size, else ``--imgsz``, else ``imgsz`` from its metadata (ultralytics
writes ``imgsz``, ``names``, ``stride``), else 640x640; a dynamic size is rounded up to a multiple of the
metadata's ``stride``. The frame is letterboxed (aspect kept, padded with 114 on
both sides, as YOLO does), converted to the channel order asked (RGB by default), scaled to 0-1 and
normalised with ``mean``/``std`` (per channel, after scaling). Channel order, mean and std come from the
flags, else from the metadata keys ``channels`` (``rgb``/``bgr``), ``mean`` and ``std`` (``[a, b, c]``),
else RGB, 0 and 1.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..data.errors import FormatError

LAYOUTS = ("auto", "yolov8", "yolov5", "xyxy")
PAD_VALUE = 114  # YOLO's letterbox grey
HOG_WINDOW = (128, 64)  # (h, w) of OpenCV's default people detector


class Detector(Protocol):
    """A person detector: one RGB frame in, person boxes and scores out."""

    name: str

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (H, W, 3) -> (n, 4), (n,)
        ...


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: ``input = frame * (rx, ry) + (left, top)``."""

    rx: float
    ry: float
    left: int
    top: int

    def to_frame(self, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Boxes ``(n, 4)`` x1y1x2y2 in input pixels -> frame pixels, clipped to ``size`` (H, W)."""
        out = (np.asarray(boxes, np.float32) - np.array([self.left, self.top, self.left, self.top], np.float32)) \
            / np.array([self.rx, self.ry, self.rx, self.ry], np.float32)
        h, w = size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out.astype(np.float32)


def letterbox(frame: np.ndarray, size: tuple[int, int], pad: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize ``frame`` (H, W, 3) into ``size`` (h, w) keeping its aspect, padding with 114 (YOLO's rule:
    the padding split in two, the extra pixel at the bottom/right). ``pad=False`` stretches instead."""
    import cv2

    H, W = frame.shape[:2]
    h, w = size
    if not pad:  # a plain resize: x and y may be scaled differently
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR), Letterbox(w / W, h / H, 0, 0)
    r = min(h / H, w / W)
    nw, nh = int(round(W * r)), int(round(H * r))
    resized = frame if (nw, nh) == (W, H) else cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (w - nw) / 2, (h - nh) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    out = np.full((h, w, 3), PAD_VALUE, np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out, Letterbox(r, r, left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by class-wise NMS, best score first: a box is dropped when its IoU with a kept box of its
    class exceeds ``iou``. OpenCV's ``NMSBoxesBatched`` (torchvision's would import torch: seconds per run)."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    b = np.asarray(boxes, np.float64)
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), np.asarray(scores, np.float32).tolist(),
                                   np.asarray(classes, np.int64).astype(int).tolist(), -np.inf, float(iou))
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[np.argsort(-np.asarray(scores, np.float32)[keep], kind="stable")]


def guess_layout(shape: Sequence[int], path: str | Path = "model") -> str:
    """The output layout from the first output's shape (see the module docs)."""
    dims = [int(d) for d in shape]
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 2:
        raise FormatError(f"output shape {list(shape)} is not (1, N, 6), (1, 4+C, N) or (1, N, 5+C); "
                          f"see 'What a detector file must provide' in docs/live.md", path=path)
    if dims[1] == 6:
        return "xyxy"
    return "yolov8" if dims[0] < dims[1] else "yolov5"


def decode(raw: np.ndarray, layout: str, person: int, score: float, path: str | Path = "model"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one image: boxes ``(n, 4)`` x1y1x2y2 (input pixels), scores ``(n,)``, classes ``(n,)``,
    those at or above ``score`` only. ``raw`` is the first output with or without its batch axis."""
    a = np.asarray(raw, np.float32)
    if a.ndim == 3:
        a = a[0]
    if a.ndim != 2:
        raise FormatError(f"output has {a.ndim} dimensions; expected (1, N, K)", path=path)
    if layout == "yolov8":
        a = a.T  # (N, 4 + C)
    need = {"yolov8": 5, "yolov5": 6, "xyxy": 6}[layout]
    if a.shape[1] < need or (layout == "xyxy" and a.shape[1] != 6):
        raise FormatError(f"output rows have {a.shape[1]} values; layout {layout} needs "
                          f"{'6' if layout == 'xyxy' else f'at least {need}'}", path=path)
    if layout == "xyxy":
        boxes, scores, classes = a[:, :4], a[:, 4], np.rint(a[:, 5]).astype(np.int64)
    else:
        cls = a[:, 4:] if layout == "yolov8" else a[:, 5:]
        if person >= cls.shape[1]:
            raise FormatError(f"person class {person} but the model gives {cls.shape[1]} class(es); "
                              f"set --person-class", path=path)
        classes = cls.argmax(axis=1)
        scores = cls[np.arange(len(cls)), classes] * (a[:, 4] if layout == "yolov5" else 1.0)
        cx, cy, w, h = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = scores >= score
    return boxes[keep], scores[keep].astype(np.float32), classes[keep]


def _metadata(session) -> dict[str, str]:
    try:
        return dict(session.get_modelmeta().custom_metadata_map or {})
    except Exception:  # pragma: no cover - models without metadata
        return {}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _triple(value, meta: dict, key: str, default: float, path) -> tuple[float, float, float]:
    """A per-channel value: the flag's, else the metadata's (``[a, b, c]`` or one number), else ``default``."""
    if value is not None:
        return tuple(float(v) for v in value)
    if key not in meta:
        return (default,) * 3
    v = _literal(meta[key])
    v = [v] * 3 if isinstance(v, (int, float)) else v
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
        raise FormatError(f"metadata {key} {meta[key][:40]!r} is not [a, b, c] or a number", path=path)
    return tuple(float(x) for x in v)


@dataclass
class OnnxDetector:
    """A YOLO-family (or plain ``xyxy``) person detector run with onnxruntime on the CPU."""

    path: Path
    layout: str = "auto"
    person_class: int | None = None  # None: 'person' from the model's names, else 0
    score: float = 0.25
    iou: float = 0.45
    imgsz: tuple[int, int] | None = None  # (h, w) when the model's input is dynamic and has no metadata
    channels: str | None = None  # None: the metadata's, else rgb
    mean: tuple[float, float, float] | None = None  # None: the metadata's, else 0
    std: tuple[float, float, float] | None = None   # None: the metadata's, else 1
    pad: bool = True
    threads: int = 0  # 0: onnxruntime's default
    name: str = field(init=False, default="onnx")

    def __post_init__(self) -> None:
        import onnxruntime as ort

        path = Path(self.path)
        if not path.is_file():
            raise FormatError("detector file not found (--detector)", path=path)
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt or invalid files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FormatError(f"not a loadable ONNX model (--detector): {first[:200]}", path=path) from None
        self.name = path.name
        meta = _metadata(self.session)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32  # half-precision exports
        if len(inp.shape) != 4:
            raise FormatError(f"input {inp.name} has shape {inp.shape}; expected (1, 3, H, W)", path=path)
        static = [d for d in inp.shape[2:] if isinstance(d, int) and d > 0]
        if len(static) == 2:
            self.input_size = (int(inp.shape[2]), int(inp.shape[3]))
        elif self.imgsz:
            self.input_size = tuple(self.imgsz)
        elif _literal(meta.get("imgsz", "")) is not None:
            v = _literal(meta["imgsz"])
            self.input_size = (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))
        else:
            self.input_size = (640, 640)
        stride = _literal(meta.get("stride", ""))
        if len(static) != 2 and isinstance(stride, int) and stride > 0:  # dynamic input: YOLO wants multiples
            self.input_size = tuple(-(-int(d) // stride) * stride for d in self.input_size)
        self.channels = str(self.channels or meta.get("channels") or "rgb").lower()
        if self.channels not in ("rgb", "bgr"):
            raise FormatError(f"channels {self.channels!r} in the metadata: rgb or bgr expected", path=path)
        self.mean = _triple(self.mean, meta, "mean", 0.0, path)
        self.std = _triple(self.std, meta, "std", 1.0, path)
        names = _literal(meta.get("names", ""))
        if self.person_class is None:
            found = [int(k) for k, v in (names or {}).items() if str(v).lower() == "person"] \
                if isinstance(names, dict) else []
            self.person_class = found[0] if found else 0
        out = self.session.get_outputs()[0]
        if self.layout == "auto":
            if all(isinstance(d, int) for d in out.shape):
                self.layout = guess_layout(out.shape, path)
            else:  # dynamic output shape: decided on the first frame
                self.layout = "auto"
        elif self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        self.metadata = meta

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """RGB frame (H, W, 3) -> model input (1, 3, h, w) float32 and the letterbox used."""
        img, box = letterbox(frame, self.input_size, pad=self.pad)
        if self.channels == "bgr":
            img = img[..., ::-1]
        x = img.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), box

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, box = self.preprocess(frame)
        raw = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        if self.layout == "auto":
            self.layout = guess_layout(raw.shape, self.path)
        boxes, scores, classes = decode(raw, self.layout, int(self.person_class), self.score, self.path)
        keep = nms(boxes, scores, classes, self.iou)
        keep = keep[classes[keep] == self.person_class]
        return box.to_frame(boxes[keep], frame.shape[:2]), scores[keep]


@dataclass
class HogDetector:
    """OpenCV's HOG + linear SVM people detector (no weights to bring; weak on broadcast footage)."""

    score: float = 0.0  # SVM margin
    iou: float = 0.45
    win_stride: int = 8
    scale: float = 1.05
    name: str = field(init=False, default="hog")

    def __post_init__(self) -> None:
        import cv2

        if not hasattr(cv2, "HOGDescriptor"):  # pragma: no cover - OpenCV 5 dropped it
            raise ImportError("--detector hog needs OpenCV 4.x (opencv-python-headless<5)")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        bgr = np.zeros((max(h, HOG_WINDOW[0]), max(w, HOG_WINDOW[1]), 3), np.uint8)
        bgr[:h, :w] = frame[..., ::-1]  # a frame smaller than the 128x64 window crashes OpenCV 4.x: pad it
        rects, weights = self.hog.detectMultiScale(bgr,
                                                   winStride=(self.win_stride, self.win_stride),
                                                   padding=(8, 8), scale=self.scale)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        r = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)
        scores = np.asarray(weights, np.float32).reshape(-1)
        ok = scores >= self.score
        boxes, scores = boxes[ok], scores[ok]
        keep = nms(boxes, scores, np.zeros(len(boxes), np.int64), self.iou)
        out = boxes[keep]
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out, scores[keep]


def load_detector(spec: str | Path, **opts) -> Detector:
    """``"hog"`` or a path to an ``.onnx`` file -> a :class:`Detector`; ``opts`` are the detector's fields
    (``score=None`` keeps the detector's default threshold)."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if str(spec).lower() == "hog":
        return HogDetector(**{k: v for k, v in opts.items() if k in ("score", "iou")})
    return OnnxDetector(Path(spec), **opts)
