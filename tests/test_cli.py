"""The `stvh` command: help everywhere, `data info`, errors as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from stvh.cli import app

runner = CliRunner()


def all_command_paths():
    root = typer.main.get_command(app)
    paths = []

    def walk(cmd, prefix):
        paths.append(prefix)
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, prefix + [name])
    walk(root, [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "stvh")
def test_help_everywhere(path):
    result = runner.invoke(app, path + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def make_vb(root, lines):
    d = root / "videos" / "7"
    d.mkdir(parents=True)
    (d / "annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_data_info_text_and_json(tmp_path):
    root = make_vb(tmp_path, ["1.jpg r_set 1 1 5 5 standing 10 10 5 5 waiting", "2.jpg l-pass 1 1 5 5 digging"])
    result = runner.invoke(app, ["data", "info", str(root)])
    assert result.exit_code == 0, result.output
    assert "clips: 2" in result.output and "r_set" in result.output and "l_pass" in result.output
    result = runner.invoke(app, ["data", "info", str(root), "--json", "--format", "volleyball"])
    s = json.loads(result.output)
    assert s["clips"] == 2 and s["clips_per_video"] == {"7": 2}
    assert s["activity_counts"] == {"r_set": 1, "l_pass": 1}
    assert s["action_counts"] == {"digging": 1, "standing": 1, "waiting": 1}


def test_data_info_errors_are_one_line(tmp_path):
    root = make_vb(tmp_path, ["1.jpg r_set 1 1 5 5 standing", "2.jpg r_smash 1 1 5 5 standing"])
    result = runner.invoke(app, ["data", "info", str(root)])
    assert result.exit_code == 2
    assert "annotations.txt:2" in result.output and "unknown label" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["data", "info", str(root), "--skip-bad", "--json"])
    s = json.loads(result.output)
    assert s["clips"] == 1 and s["skipped"] == 1 and s["skipped_by_kind"] == {"unknown label": 1}
    row = s["skipped_inputs"][0]
    assert row["file"].endswith("annotations.txt") and row["line"] == "2" and row["kind"] == "unknown label"
    result = runner.invoke(app, ["data", "info", str(root), "--skip-bad"])  # the text lists file:line too
    assert result.exit_code == 0 and "annotations.txt:2: unknown label: activity 'r_smash'" in result.output


def test_data_info_unknown_folder(tmp_path):
    result = runner.invoke(app, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
