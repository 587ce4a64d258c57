"""stvh: multi-focused video group activity hashing (STVH and M-STVH).

The package follows the pipeline: ``data`` (readers, generator) -> ``models``
-> ``train`` -> ``index`` -> ``serve``; ``cli`` is the command-line face.
"""

__version__ = "0.1.0"
