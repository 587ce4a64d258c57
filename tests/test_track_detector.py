"""ONNX person detectors: layouts, letterbox mapping, class-wise NMS, metadata and errors, on tiny
constant-output models built here (onnx's helper API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from stvh.data.errors import FormatError  # noqa: E402
from stvh.track.detector import guess_layout, letterbox, load_detector  # noqa: E402

# Frame 128x256 (HxW) into a 64x64 input: ratio 0.25, 64x32 image, 16 rows of padding above and below.
FRAME = np.full((128, 256, 3), (10, 20, 30), np.uint8)


def make_model(path: Path, out: np.ndarray, in_shape=(1, 3, 64, 64), meta: dict | None = None,
               in_type=TensorProto.FLOAT) -> Path:
    """A model whose first output is the constant ``out`` whatever the input."""
    out = np.asarray(out, np.float32)
    inp = helper.make_tensor_value_info("images", in_type, list(in_shape))
    res = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    node = helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(out, "c"))
    model = helper.make_model(helper.make_graph([node], "g", [inp], [res]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))
    return path


# Candidates in input pixels (cx, cy, w, h), class scores (person, ball), objectness.
#   A: frame box (40, 20, 120, 100) -> input (10, 21, 30, 41) -> cx 20, cy 31, w 20, h 20
#   A': A moved 1 px right (IoU 0.9 with A, lower score: removed by NMS)
#   B: a ball over A (class 1, score 0.95): class-wise NMS keeps A
#   C: person below the score threshold;  E: best class is "ball"
#   D: person reaching past the image: input (50, 40, 70, 60) -> frame (200, 96, 280, 176) -> clipped (.., 256, 128)
CANDIDATES = [  # cx, cy, w, h, person, ball, obj
    (20, 31, 20, 20, 0.9, 0.1, 1.0),    # A
    (21, 31, 20, 20, 0.8, 0.0, 1.0),    # A'
    (20, 31, 20, 20, 0.0, 0.95, 1.0),   # B
    (40, 30, 4, 4, 0.2, 0.1, 1.0),      # C
    (5, 30, 4, 4, 0.3, 0.6, 1.0),       # E
    (60, 50, 20, 20, 0.5, 0.0, 1.0),    # D
    (0, 0, 0, 0, 0.0, 0.0, 0.0),
    (0, 0, 0, 0, 0.0, 0.0, 0.0),
]
EXPECTED = np.array([[40, 20, 120, 100], [200, 96, 256, 128]], np.float32)


def yolov8_output() -> np.ndarray:
    c = np.array(CANDIDATES, np.float32)
    return c[:, :6].T[None]  # (1, 4 + 2, 8)


def yolov5_output(obj: float = 0.5) -> np.ndarray:
    c = np.array(CANDIDATES, np.float32)
    return np.concatenate([c[:, :4], np.full((8, 1), obj, np.float32), c[:, 4:6]], axis=1)[None]  # (1, 8, 7)


def xyxy_output() -> np.ndarray:
    rows = []
    for cx, cy, w, h, p, b, _ in CANDIDATES:
        score, cls = (p, 0) if p >= b else (b, 1)
        rows.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, cls))
    return np.array(rows, np.float32)[None]  # (1, 8, 6)


def test_letterbox_geometry_and_padding():
    img, box = letterbox(FRAME, (64, 64))
    assert (box.rx, box.ry, box.left, box.top) == (0.25, 0.25, 0, 16)
    assert img.shape == (64, 64, 3)
    assert (img[:16] == 114).all() and (img[48:] == 114).all()
    assert (img[16:48] == (10, 20, 30)).all()
    back = box.to_frame(np.array([[10, 21, 30, 41], [-4, 10, 70, 60]], np.float32), (128, 256))
    np.testing.assert_array_equal(back, [[40, 20, 120, 100], [0, 0, 256, 128]])


@pytest.mark.parametrize("layout,output", [("yolov8", yolov8_output()), ("yolov5", yolov5_output()),
                                           ("xyxy", xyxy_output())])
def test_decoding_letterbox_and_classwise_nms(tmp_path, layout, output):
    det = load_detector(make_model(tmp_path / "m.onnx", output))
    assert det.layout == layout  # told from the output shape
    boxes, scores = det(FRAME)
    np.testing.assert_allclose(boxes, EXPECTED, atol=1e-4)
    obj = 0.5 if layout == "yolov5" else 1.0
    np.testing.assert_allclose(scores, [0.9 * obj, 0.5 * obj], atol=1e-6)


def test_score_threshold_and_nms_iou_flags(tmp_path):
    path = make_model(tmp_path / "m.onnx", yolov8_output())
    boxes, scores = load_detector(path, score=0.6)(FRAME)  # D (0.5) is below
    np.testing.assert_allclose(boxes, EXPECTED[:1], atol=1e-4)
    boxes, _ = load_detector(path, iou=0.95)(FRAME)  # A and A' overlap at IoU 0.905: both kept
    assert len(boxes) == 3
    np.testing.assert_allclose(boxes[1], [44, 20, 124, 100], atol=1e-4)


def test_person_class_from_metadata_and_dynamic_input(tmp_path):
    out = yolov8_output()[:, [0, 1, 2, 3, 5, 4]]  # classes swapped: person is class 1
    meta = {"names": "{0: 'sports ball', 1: 'person'}", "imgsz": "[64, 64]", "stride": "32"}
    det = load_detector(make_model(tmp_path / "m.onnx", out, in_shape=(1, 3, "h", "w"), meta=meta))
    assert det.input_size == (64, 64) and det.person_class == 1
    boxes, _ = det(FRAME)
    np.testing.assert_allclose(boxes, EXPECTED, atol=1e-4)
    boxes, _ = load_detector(tmp_path / "m.onnx", person_class=0)(FRAME)  # the flag wins: balls B and E
    np.testing.assert_allclose(boxes, [[40, 20, 120, 100], [12, 48, 28, 64]], atol=1e-4)


def test_forced_layout_for_a_one_class_yolov5(tmp_path):
    c = np.array(CANDIDATES, np.float32)
    out = np.concatenate([c[:, :4], np.ones((8, 1), np.float32), c[:, 4:5]], axis=1)[None]  # (1, 8, 6)
    path = make_model(tmp_path / "m.onnx", out)
    assert load_detector(path).layout == "xyxy"  # ambiguous: the last dimension is 6
    boxes, _ = load_detector(path, layout="yolov5")(FRAME)
    # one class: E (person 0.3) is now a person; A' is removed by NMS
    np.testing.assert_allclose(boxes, [[40, 20, 120, 100], [200, 96, 256, 128], [12, 48, 28, 64]], atol=1e-4)


def test_normalisation_channels_mean_std(tmp_path):
    det = load_detector(make_model(tmp_path / "m.onnx", yolov8_output()), channels="bgr",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    x, _ = det.preprocess(FRAME)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 32, 32], [(30 / 255 - 0.5) / 0.5, (20 / 255 - 0.5) / 0.25,
                                                 (10 / 255 - 0.5) / 0.5], rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 0], [(114 / 255 - 0.5) / 0.5, (114 / 255 - 0.5) / 0.25,
                                               (114 / 255 - 0.5) / 0.5], rtol=1e-6)


def test_bad_files_and_shapes_name_the_file(tmp_path):
    with pytest.raises(FormatError, match="missing.onnx.*not found"):
        load_detector(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(FormatError, match="junk.onnx.*not a loadable ONNX model"):
        load_detector(junk)
    with pytest.raises(FormatError, match="w.onnx.*output shape"):
        load_detector(make_model(tmp_path / "w.onnx", np.zeros((1, 2, 3, 4))))
    with pytest.raises(FormatError, match="person class 5"):
        load_detector(make_model(tmp_path / "m.onnx", yolov8_output()), person_class=5)(FRAME)
    assert guess_layout([1, 84, 8400]) == "yolov8" and guess_layout([1, 25200, 85]) == "yolov5"


def test_half_precision_input(tmp_path):
    det = load_detector(make_model(tmp_path / "m.onnx", yolov8_output(), in_type=TensorProto.FLOAT16))
    boxes, _ = det(FRAME)  # a float32 input would be refused by onnxruntime
    np.testing.assert_allclose(boxes, EXPECTED, atol=1e-4)


def test_hog_runs_offline():
    boxes, scores = load_detector("hog")(np.zeros((90, 160, 3), np.uint8))  # smaller than its window
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_normalisation_and_stride_from_metadata(tmp_path):
    meta = {"channels": "bgr", "mean": "[0.5, 0.5, 0.5]", "std": "0.5", "imgsz": "[60, 60]", "stride": "32"}
    det = load_detector(make_model(tmp_path / "m.onnx", yolov8_output(), in_shape=(1, 3, "h", "w"), meta=meta))
    assert det.input_size == (64, 64)  # 60 rounded up to the stride
    x, _ = det.preprocess(FRAME)
    np.testing.assert_allclose(x[0, :, 32, 32], [(30 / 255 - 0.5) / 0.5, (20 / 255 - 0.5) / 0.5,
                                                 (10 / 255 - 0.5) / 0.5], rtol=1e-6)
    flags = load_detector(tmp_path / "m.onnx", channels="rgb", mean=(0, 0, 0), std=(1, 1, 1))  # flags win
    np.testing.assert_allclose(flags.preprocess(FRAME)[0][0, :, 32, 32], [10 / 255, 20 / 255, 30 / 255], rtol=1e-6)
    with pytest.raises(FormatError, match="b.onnx.*metadata mean"):
        load_detector(make_model(tmp_path / "b.onnx", yolov8_output(), meta={"mean": "[1, 2]"}))
