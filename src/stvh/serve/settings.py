"""What ``stvh serve`` is told: paths, address, write permission and upload limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..train.config import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one uploaded clip (a request over them gets 413).

    ``max_bytes`` caps the whole request body (video or zip + tracks + fields),
    ``max_unzipped_bytes`` the frames a zip expands to, ``max_frames`` the frames
    of the video or zip, ``max_persons`` the distinct track ids of the tracks file.
    ``max_frame_pixels`` caps one frame's width x height and ``max_upload_pixels``
    the sum over the upload's frames; both are read from image and stream headers
    before any pixel is decoded (defaults: a 4K UHD frame, 600 frames of 1080p).
    """

    max_bytes: int = 64 * MIB
    max_unzipped_bytes: int = 256 * MIB
    max_frames: int = 600
    max_persons: int = 64
    max_frame_pixels: int = 8_300_000
    max_upload_pixels: int = 1_250_000_000

    def __post_init__(self):
        for name in ("max_bytes", "max_unzipped_bytes", "max_frames", "max_persons", "max_frame_pixels",
                     "max_upload_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"upload limit {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ServeSettings:
    """Everything the service needs to start; ``data=None`` takes the run's dataset.

    ``uploads``: the folder of clips added with ``POST /api/clips`` (default
    ``<index>.uploads`` beside the index). ``clip_frames`` / ``clip_persons``:
    T and N of an uploaded clip (default: those of the dataset's clips).
    ``watch``: a folder whose new footage is ingested into the index while serving (``stvh.watch``).
    ``token``: the write token (``--token``; ``None``: one is made at start-up
    when writes are allowed). ``allowed_hosts``: more names the ``Host`` header
    may give (``--allowed-host``; ``*`` accepts any), beside those of ``host``.
    """

    run: Path
    index: Path
    data: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    allow_writes: bool = False
    uploads: Path | None = None
    checkpoint: str = "best"
    device: str = "cpu"
    limits: UploadLimits = UploadLimits()
    clip_frames: int | None = None
    clip_persons: int | None = None
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    watch: Path | None = None       # --watch DIR: ingest new footage into the index (stvh.watch)
    watch_poll: float = 0.5         # seconds between scans of DIR
    watch_settle: float = 1.0       # seconds a video's files must stay unchanged before it is read
    detector: str | None = None     # --detector FILE.onnx|hog: track watched footage that has no tracks
    region: str | None = None       # --region: the detector's region mask (stvh.track.RegionMask.parse)
    track_config: Path | None = None  # --track-config: stvh track's track.yaml (stvh.track.settings)

    def __post_init__(self):
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        for name in ("clip_frames", "clip_persons"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.watch is not None and not Path(self.watch).is_dir():
            raise ConfigError(f"--watch {self.watch} is not a folder (a MOT-layout folder: tracks/NAME.txt + "
                              "videos/ or frames/)")
        if not (self.watch_poll > 0 and self.watch_settle >= 0):
            raise ConfigError(f"--poll must be > 0 and --settle >= 0 seconds, got {self.watch_poll} and "
                              f"{self.watch_settle}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("--token must be at least 16 characters (it guards writes to the index)")

    @property
    def uploads_dir(self) -> Path:
        return Path(self.uploads) if self.uploads is not None else Path(f"{self.index}.uploads")
