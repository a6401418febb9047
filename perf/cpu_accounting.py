"""CPU time of process trees and of the whole machine, from /proc: which process used the cores
during a benchmark run (the load generator, each service, everything else)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime in seconds) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # comm may contain spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (Triton's python-backend stubs are its children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (user + nice + system + irq + softirq + steal)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user/nice
    return (sum(values) - idle - guest) / CLK_TCK


@dataclass
class CpuProbe:
    """CPU seconds of named process trees (pids resolved before a run: reading a dozen
    /proc/<pid>/stat files costs ~0.1 ms, scanning /proc several ms)."""

    trees: dict[str, list[int]]

    @classmethod
    def of(cls, roots: dict[str, int | None]) -> CpuProbe:
        return cls({name: process_tree(pid) for name, pid in roots.items() if pid})

    def read(self) -> dict[str, float]:
        out = {name: sum(s[1] for p in pids if (s := _proc_stat(p))) for name, pids in self.trees.items()}
        out["generator"] = time.process_time()
        out["machine"] = machine_busy_s()
        out["wall"] = time.perf_counter()
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Cores busy per process tree over the interval; ``other`` = the rest of the machine."""
        wall = after["wall"] - before["wall"]
        busy = {k: (after[k] - before[k]) / wall for k in before if k not in ("wall",)}
        known = sum(v for k, v in busy.items() if k != "machine")
        busy["other"] = max(0.0, busy.pop("machine") - known)
        return {k: round(v, 3) for k, v in busy.items()}

