"""Pictures the service sends: a clip's key frame with its boxes (JPEG) and its attention maps (PNG).

Both reuse the report's drawing (``stvh.eval.report``): the key frame of
``clip_thumbnail`` and the O-MFAT / G-MFAT figure of Fig. 11 (Eq. 4's combined
map, per depth).
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections import OrderedDict
from typing import Callable

from ..data.clip import Clip


def keyframe_jpeg(clip: Clip, width: int, quality: int = 85) -> bytes:
    """The key frame of ``clip`` with its persons' boxes, ``width`` px wide, as JPEG bytes."""
    from PIL import Image

    from ..eval.report import clip_thumbnail

    img, _, _ = clip_thumbnail(clip, width=width)  # (h, w, 3) uint8
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def attention_png(model, inputs: dict, clip: Clip, activities: list[str], actions: list[str]) -> bytes:
    """The report's attention figure of one clip (Fig. 11) as PNG bytes.

    ``inputs``: the clip's model inputs (``ClipTensors.batch``: boxes (1, T, N, 4),
    mask (1, N), image_size (1, 2), roi (1, N, T, C, s, s) for CNN backbones).
    Raises ``ValueError`` when the model keeps no attention maps.
    """
    import torch

    from ..eval.report import _attention_figure, attention_maps

    if not hasattr(model, "set_keep_attention"):
        raise ValueError(f"model {type(model).__name__} has no attention maps to show")
    model.set_keep_attention(True)
    try:
        with torch.no_grad():
            out = model(inputs["boxes"], inputs["mask"], inputs["image_size"], roi=inputs.get("roi"))
        if not out.attention:
            raise ValueError(f"model {type(model).__name__} returned no attention maps")
        kind, layers = attention_maps(out.attention, clip.mask, clip.key_index)
    finally:
        model.set_keep_attention(False)
    tag = _attention_figure(clip, kind, layers, activities, actions)  # '<img ... src="data:image/png;base64,...">'
    match = re.search(r'base64,([A-Za-z0-9+/=]+)"', tag)
    if match is None:  # pragma: no cover - the report always embeds a PNG
        raise ValueError("the attention figure holds no PNG")
    return base64.b64decode(match.group(1))


class BytesCache:
    """A thread-safe least-recently-used cache of rendered images, bounded in entries and in bytes.

    The byte bound keeps a client that asks for every clip at every width from
    filling memory (4096 key frames 1280 px wide would be hundreds of MB).
    """

    def __init__(self, size: int = 4096, max_bytes: int = 64 << 20):
        self.size = size
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: rendering takes milliseconds
        if len(value) > self.max_bytes:
            return value  # never kept
        with self._lock:
            old = self._items.pop(key, None)
            self.nbytes += len(value) - (len(old) if old is not None else 0)
            self._items[key] = value
            while len(self._items) > self.size or self.nbytes > self.max_bytes:
                self.nbytes -= len(self._items.popitem(last=False)[1])
        return value

    def drop(self, clip_id: str) -> None:
        """Forget every picture of ``clip_id`` (its id may come back with other content)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == clip_id]:
                self.nbytes -= len(self._items.pop(key))

