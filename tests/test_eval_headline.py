"""`stvh eval`'s headline: stored and F-derived codes side by side, columns aligned."""

from __future__ import annotations

import re

from stvh.eval.evaluate import format_headline


def _metrics(depth=3, bits=64, derived=True):
    m = {"mca": 0.9, "mpca": 0.85, "action_acc": 0.7}
    for t in range(1, depth + 1):
        m[f"map@10/activity/K{bits}/depth{t}"] = 0.5 + 0.1 * t
        m[f"map@10/visual/K{bits}/depth{t}"] = 1.0 - 0.2 * t
        if derived and t < depth:
            m[f"map@10/activity/K{bits}/depth{t}/derived"] = 0.45 + 0.1 * t
            m[f"map@10/visual/K{bits}/depth{t}/derived"] = 0.95 - 0.2 * t
    return m


def test_stored_and_derived_sit_side_by_side_in_aligned_columns():
    lines = format_headline(_metrics(), {"bits": 64, "depth": 3, "clips": 720}).splitlines()
    header, rows = lines[1], lines[2:5]
    assert re.split(r"\s{2,}", header.strip()) == ["depth", "activity mAP@10", "activity (F)", "visual mAP@10",
                                                   "visual (F)"]
    ends = [m.end() for m in re.finditer(r"\S+(?: \S+)*", header)]  # right edge of every column title
    for row in rows:
        assert [m.end() for m in re.finditer(r"\S+", row)] == ends  # every value ends under its title
    assert rows[0].split() == ["1", "0.6000", "0.5500", "0.8000", "0.7500"]
    assert rows[2].split() == ["3", "0.8000", "-", "0.4000", "-"]  # the deepest code is stored, not derived
    assert lines[5] == ("storage (Eq. 18): every depth 138240 bits; deepest code + F 50176 bits "
                        "(M = 720, K = 64, depths = 3)")


def test_without_derived_codes_no_storage_line():
    lines = format_headline(_metrics(derived=False), {"bits": 64, "depth": 3, "clips": 720}).splitlines()
    assert len(lines) == 5 and all(r.split()[2] == "-" for r in lines[2:])
