import json
import subprocess
import sys

from perf import bench_train_step
from perf.harness import REPO_ROOT


def test_measure_times_every_batch_size_and_the_scripted_user_tower():
    result = bench_train_step.measure(items=40, batches=[4, 8], steps=2)
    assert set(result) == {"train_step_b4", "train_step_b8", "user_tower_b1"}
    assert all(ms > 0 for ms in result.values())


def test_a_side_runs_the_code_of_the_root_it_is_given(tmp_path):
    # a root whose export package is broken must fail that side, not quietly measure this tree
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "__init__.py").write_text("raise ImportError('base tree')\n")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "perf" / "bench_train_step.py"), "--measure",
                           str(tmp_path), "--items", "40", "--batch", "4", "--steps", "1"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "base tree" in done.stderr
    done = subprocess.run([sys.executable, str(REPO_ROOT / "perf" / "bench_train_step.py"), "--measure",
                           str(REPO_ROOT), "--items", "40", "--batch", "4", "--steps", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.splitlines()[-1])) == {"train_step_b4", "user_tower_b1"}
