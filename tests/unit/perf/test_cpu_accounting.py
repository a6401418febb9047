"""perf/cpu_accounting.py: CPU of process trees from /proc."""

import os
import subprocess
import sys

from perf.cpu_accounting import CpuProbe, machine_busy_s, process_tree


def test_process_tree_includes_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert process_tree(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()


def test_cores_split_the_machine_into_known_trees_and_other():
    before = {"gateway": 1.0, "generator": 2.0, "machine": 10.0, "wall": 100.0}
    after = {"gateway": 2.0, "generator": 2.5, "machine": 13.0, "wall": 102.0}
    assert CpuProbe.cores(before, after) == {"gateway": 0.5, "generator": 0.25, "other": 0.75}


def test_probe_reads_itself_and_the_machine():
    probe = CpuProbe.of({"me": os.getpid(), "absent": None})
    reading = probe.read()
    assert set(reading) == {"me", "generator", "machine", "wall"}
    assert reading["me"] > 0 and machine_busy_s() >= reading["machine"]
