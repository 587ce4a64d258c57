"""One entry point for every supported format: detection and reading."""

from __future__ import annotations

from pathlib import Path

from .clip import ClipDataset
from .errors import FormatError

FORMATS = ("volleyball", "cad", "caed", "mot")


def detect_format(root: str | Path) -> str:
    """Guess the format of a dataset folder; raise :class:`FormatError` when none fits."""
    root = Path(root)
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


def read_dataset(root: str | Path, format: str | None = None, **kwargs) -> ClipDataset:
    """Read any supported dataset; ``format`` is detected when ``None``.

    Extra keyword arguments go to the reader (e.g. ``skip_bad``, ``n_max``).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = format or detect_format(root)
    if format is not None:
        try:
            found = detect_format(root)
        except FormatError:
            found = None  # let the reader say what is wrong
        if found is not None and found != fmt and {found, fmt} != {"cad", "caed"}:
            raise FormatError(f"this is a {found} dataset, but format {fmt!r} was asked for (data.format in the "
                              f"config or --format); set it to {found!r}, or to null to detect it", path=root)
    if fmt == "volleyball":
        from .volleyball import read_volleyball
        return read_volleyball(root, **kwargs)
    if fmt in ("cad", "caed"):
        from .cad import read_cad
        return read_cad(root, variant=fmt, **kwargs)
    if fmt == "mot":
        from .mot import read_mot
        return read_mot(root, **kwargs)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
