"""One entry point for every supported format: detection and reading."""

from __future__ import annotations

from pathlib import Path

from .clip import ClipDataset
from .errors import FormatError

FORMATS = ("volleyball", "cad", "caed", "mot")


def detect_format(root: str | Path, flag: str | None = "--data") -> str:
    """Guess the format of a dataset folder; raise :class:`FormatError` when none fits.

    ``flag`` names the command-line flag that gave ``root`` (``None``: a positional argument).
    """
    root = Path(root)
    _check_folder(root, flag)
    if not root.is_dir():
        raise FormatError("dataset folder does not exist", path=root)
    from .volleyball import looks_like_volleyball
    if looks_like_volleyball(root):
        return "volleyball"
    from .cad import looks_like_cad
    if looks_like_cad(root):
        return _cad_or_caed(root)
    from .mot import looks_like_mot
    if looks_like_mot(root):
        return "mot"
    raise FormatError("cannot detect the dataset format; pass --format one of " + ", ".join(FORMATS), path=root)


def _check_folder(root: Path, flag: str | None) -> None:
    if root.exists() and not root.is_dir():
        given = f"{flag} {root}" if flag else str(root)
        raise FormatError(f"{given} is a file; it must be a dataset folder")


def _cad_or_caed(root: Path) -> str:
    """CAED adds action ids 7 (dancing) and 8 (jogging); CAD has 44 sequences at most."""
    seqs = sorted(root.glob("seq*/annotations.txt"))
    if len(seqs) > 44:
        return "caed"
    for ann in seqs:
        with open(ann, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 6 and f[5] in ("7", "8"):
                    return "caed"
    return "cad"


def _check_options(fmt: str, reader, kwargs: dict) -> None:
    """Refuse, naming the config key, a reader option the ``fmt`` reader does not have (``data.window`` with MOT)."""
    import inspect

    known = inspect.signature(reader).parameters
    for key in kwargs:
        if key in known:
            continue
        if key == "window" and fmt == "mot":
            raise ValueError("data.window does not apply to mot data: its clips are the rows of clips.csv, or "
                             "windows of data.reader.frames_per_clip frames; set data.window to null")
        options = ", ".join(k for k in known if k not in ("root", "variant", "skip_bad"))
        name = f"data.{key}" if key in ("window", "n_max") else f"data.reader.{key}"
        raise ValueError(f"{name} is not an option of the {fmt} reader (its options: {options})")


def read_dataset(root: str | Path, format: str | None = None, *, flag: str | None = "--data",
                 **kwargs) -> ClipDataset:
    """Read any supported dataset; ``format`` is detected when ``None``.

    Extra keyword arguments go to the reader (e.g. ``skip_bad``, ``n_max``); one the
    reader does not take is a ``ValueError`` naming its config key. ``flag``: see
    :func:`detect_format`.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    _check_folder(Path(root), flag)
    fmt = format or detect_format(root, flag)
    if format is not None:
        try:
            found = detect_format(root, flag)
        except FormatError:
            found = None  # let the reader say what is wrong
        if found is not None and found != fmt and {found, fmt} != {"cad", "caed"}:
            raise FormatError(f"this is a {found} dataset, but format {fmt!r} was asked for (data.format in the "
                              f"config or --format); set it to {found!r}, or to null to detect it", path=root)
    if fmt == "volleyball":
        from .volleyball import read_volleyball as reader
    elif fmt in ("cad", "caed"):
        from .cad import read_cad as reader
        kwargs = {"variant": fmt, **kwargs}
    elif fmt == "mot":
        from .mot import read_mot as reader
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _check_options(fmt, reader, kwargs)
    return reader(root, **kwargs)
