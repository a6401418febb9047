"""perf/harness.py: what every benchmark shares — environment, fresh export, the results ending."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from perf import harness


def test_environment_names_the_machine_and_the_commit():
    env = harness.environment(extra_fact=3)
    assert env["cpu_count"] >= 1 and env["python"].count(".") == 2 and env["machine"]
    assert env["extra_fact"] == 3
    # The repository is a git checkout: a 40-hex commit and a dirty flag.
    assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)


def test_git_commit_outside_a_repository_is_none(tmp_path):
    assert harness.git_commit(tmp_path) == {"git_commit": None, "git_dirty": None}


def test_write_csv_keeps_only_the_columns_in_order(tmp_path):
    path = tmp_path / "deep" / "rows.csv"
    harness.write_csv(path, ["b", "a"], [{"a": 1, "b": 2, "ignored": 3}, {"a": None}])
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["b", "a"], ["2", "1"], ["", ""]]


def test_write_json_writes_paths_and_numpy_values_as_text(tmp_path):
    harness.write_json(tmp_path / "r.json", {"path": Path("/x"), "n": np.int64(3), "ok": True})
    assert json.loads((tmp_path / "r.json").read_text()) == {"path": "/x", "n": "3", "ok": True}


def test_figure_saves_a_png_and_closes_it(tmp_path):
    import matplotlib.pyplot as plt

    with harness.figure(tmp_path / "p.png", 2, (4, 2)) as (fig, (left, right)):
        left.plot([1, 2], [3, 4])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


def test_finish_exit_code_and_failures_on_stderr(capsys):
    assert harness.finish("out/a.csv", [], 12.4) == 0
    assert capsys.readouterr().out == "wrote out/a.csv (12 s)\n"
    assert harness.finish("out/a.csv", ["run 1 failed", "run 2 failed"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "wrote out/a.csv\n"
    assert captured.err == "FAILED:\n  run 1 failed\n  run 2 failed\n"


def test_export_fresh_trains_in_a_subprocess_with_the_repo_importable(tmp_path, monkeypatch):
    calls = []

    def fake_run(argv, **kwargs):
        calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    repository, artifacts = harness.export_fresh(tmp_path, 2, tmp_path / "logs" / "export.log")
    assert (repository, artifacts) == (tmp_path / "model_repository", tmp_path / "artifacts")
    argv, kwargs = calls[0]
    assert argv[1:3] == ["-m", "export"] and "--no-baselines" in argv
    assert argv[argv.index("--epochs") + 1] == "2" and argv[argv.index("--seeds") + 1] == "0"
    assert str(harness.REPO_ROOT) in kwargs["env"]["PYTHONPATH"].split(":")
    assert (tmp_path / "logs" / "export.log").exists()

    monkeypatch.setattr(harness.subprocess, "run",
                        lambda argv, **kw: subprocess.CompletedProcess(argv, 3))
    with pytest.raises(SystemExit, match="export failed"):
        harness.export_fresh(tmp_path, 1, tmp_path / "export.log")
