"""The indexed clips as arrays, for paging and filtering the clip list (``GET /api/clips``)."""

from __future__ import annotations

import numpy as np


class Catalogue:
    """The indexed clips as arrays, for paging and filtering: ids, activity, group, split (all (n,))."""

    def __init__(self, ids: list[str], activity: np.ndarray, group: np.ndarray, split: np.ndarray):
        self.ids = np.asarray(ids, dtype=object)
        self.activity = np.asarray(activity, dtype=np.int64)
        self.group = np.asarray(group, dtype=object)
        self.split = np.asarray(split, dtype=object)
        self.splits = sorted(set(self.split.tolist()))   # the values the filters take
        self.groups = sorted(set(self.group.tolist()))

    def extended(self, ids: list[str], activity, group, split) -> "Catalogue":
        """This catalogue with rows appended (a copy of the arrays: O(n) in C, no per-clip Python as a rebuild)."""
        out = Catalogue.__new__(Catalogue)
        out.ids = np.concatenate([self.ids, np.asarray(ids, dtype=object)])
        out.activity = np.concatenate([self.activity, np.asarray(activity, dtype=np.int64)])
        out.group = np.concatenate([self.group, np.asarray(group, dtype=object)])
        out.split = np.concatenate([self.split, np.asarray(split, dtype=object)])
        out.splits = sorted(set(self.splits) | set(np.asarray(split, dtype=object).tolist()))
        out.groups = sorted(set(self.groups) | set(np.asarray(group, dtype=object).tolist()))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, split: str | None, activity: int | None, group: str | None) -> np.ndarray:
        """Row numbers matching every given filter, in index order."""
        keep = np.ones(len(self.ids), bool)
        if split is not None:
            keep &= self.split == split
        if activity is not None:
            keep &= self.activity == activity
        if group is not None:
            keep &= self.group == group
        return np.flatnonzero(keep)
