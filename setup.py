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


def _link_args() -> list[str]:
    return [] if sys.platform == "win32" else ["-pthread"]   # both kernels split query batches over threads


setup(
    ext_modules=[
        Extension(
            name,
            [f"src/stvh/index/{name.rsplit('.', 1)[1]}.c"],
            extra_compile_args=_compile_args() + ([] if sys.platform == "win32" else ["-pthread"]),
            extra_link_args=_link_args(),
            optional=True,  # no compiler: install anyway, stvh falls back to its other engines
        )
        # the scan (_hamming) and multi-index hashing (_mih, falls back to the scan when missing)
        for name in ("stvh.index._hamming", "stvh.index._mih")
    ]
)
