"""How many torch threads a training run uses: a number, or "auto" (threads = 0).

Auto: every core the process may run on while nothing else keeps them busy, and one
fewer for each core that something else does, looked at again every half minute. A long
run then takes both cores of an idle machine and gives one back while a test suite or a
restore runs beside it (two processes that each want both cores run several times slower
each: README, "Performance"). Linux reads the per-core counters of /proc/stat; elsewhere
auto means one thread per core, torch's default.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional

# Another process keeps a core busy when it uses more than this share of one.
BUSY_SHARE = 0.5
CHECK_EVERY_S = 30.0


def usable_cores() -> list:
    """The cores this process may run on (its affinity: `taskset` narrows it)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:                                  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cores) -> Optional[float]:
    """CPU seconds spent busy on `cores` since boot (all processes), or None."""
    try:
        lines = open("/proc/stat", encoding="ascii").read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:]]
            busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)   # minus idle, iowait
    return busy / tick


class AutoThreads:
    """threads(): the torch threads to use now. Call it as often as convenient; it looks
    at the machine at most every CHECK_EVERY_S seconds and otherwise repeats itself."""

    def __init__(self, check_every_s: float = CHECK_EVERY_S):
        self.cores = usable_cores()
        self.check_every_s = check_every_s
        self.current = len(self.cores)
        self._last: Dict[str, float] = {}

    def _sample(self) -> Optional[Dict[str, float]]:
        busy = _busy_seconds(self.cores)
        if busy is None:
            return None
        return {"wall": time.monotonic(), "busy": busy, "own": time.process_time()}

    def threads(self) -> int:
        now = time.monotonic()
        if self._last and now - self._last["wall"] < self.check_every_s:
            return self.current
        sample = self._sample()
        if sample is None:
            return self.current
        if self._last:
            wall = sample["wall"] - self._last["wall"]
            others = (sample["busy"] - self._last["busy"] - (sample["own"] - self._last["own"])) / wall
            self.current = others_to_threads(others, len(self.cores))
        self._last = sample
        return self.current


def others_to_threads(others_cores: float, cores: int) -> int:
    """Threads for a run on `cores` cores while other processes use `others_cores` of them."""
    taken = int(others_cores + (1 - BUSY_SHARE))          # round: 0.5 of a core counts as one
    return max(1, cores - taken)
