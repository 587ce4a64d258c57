"""Build of the C extension ``stvh.index._hamming``; all metadata lives in pyproject.toml."""

import platform
import sys

from setuptools import Extension, setup


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]
    args = ["-O3"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        args.append("-mpopcnt")     # one POPCNT instruction instead of a libgcc call
    return args


setup(
    ext_modules=[
        Extension(
            "stvh.index._hamming",
            ["src/stvh/index/_hamming.c"],
            extra_compile_args=_compile_args(),
            optional=True,  # no compiler: install anyway, stvh falls back to its other engines
        )
    ]
)
