"""How magn shares the CPU's cores: the OpenMP wait policy, splitting torch's threads
between images restored at once, and running an image's batches of tiles side by side.

The wait policy. torch's CPU builds on Linux run their intra-op threads on GNU OpenMP
(libgomp), whose default is to spin-wait between parallel regions for cores it expects
to get back. Two magn processes on the same cores (`xargs -P 2`, two shells) then spend
their time spinning for cores the other one holds: on 2 cores, two processes restoring
4 Kodak images each took 87 s each, against 11 s alone. A passive policy lets an idle
thread sleep instead. It is read once, when the OpenMP runtime loads (with torch), so it
has to be in the environment before torch is first imported: the command line,
`magncli/cli/app.py`, calls `set_default_wait_policy()` before it imports anything that
imports torch. A value the user set (`OMP_WAIT_POLICY=ACTIVE`) is kept. The library
sets nothing: `import magncli` leaves a program's environment (and its OpenMP runtime)
as the program set it. LLVM/Intel OpenMP (other builds of torch) honour
OMP_WAIT_POLICY too (PASSIVE: no block time), so no KMP_* variable is set.

Not for `magn train`: a training step is thousands of small operators, and with passive
waiting a second intra-op thread sleeps and wakes at each of them. A real run of the gray
recipe through `magn train` made 62 samples/s at 2 threads against 124 at 1 (2026-12-07,
Intel Xeon, 2 cores); with libgomp's default spinning, 170 at 2 threads. Training shares
cores by other means: `--threads auto` drops to one thread while anything else runs.
Restoring needs neither: the engine runs tiles side by side at one thread each
(inference.tile_workers), so its threads never wait for one another.

This module imports nothing heavy at import time (it runs before torch is loaded).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"
SPINNING_COMMANDS = {"train"}     # keep OpenMP's default: see the module docstring


def command_of(argv) -> str:
    """The subcommand in a `magn` command line's arguments (after the program), "" if none."""
    return next((a for a in argv if not a.startswith("-")), "")


def set_default_wait_policy(argv=()) -> bool:
    """Put OMP_WAIT_POLICY=PASSIVE into this process's environment unless the user set
    a policy, the command (argv: the arguments after the program) is one that spins, or
    torch (and so its OpenMP runtime) is loaded already, when it could no longer take
    effect. Returns whether it set it."""
    if WAIT_POLICY_VARIABLE in os.environ or "torch" in sys.modules or command_of(argv) in SPINNING_COMMANDS:
        return False
    os.environ[WAIT_POLICY_VARIABLE] = DEFAULT_WAIT_POLICY
    return True


def threads_per_worker(workers: int, budget: int) -> int:
    """torch intra-op threads for each of `workers` images run at once, out of `budget`
    threads (torch.get_num_threads(): the cores, or the user's OMP_NUM_THREADS)."""
    return max(1, budget // max(1, workers))


@contextmanager
def split_threads(workers: int) -> Iterator[int]:
    """For the block, give torch's intra-op pool a 1/workers share of its threads (at
    least one), so that `workers` threads each running one image use about the cores
    that one image would; the previous setting is restored after. Yields the share.

    A thread started inside the block takes the share when it first runs a torch op
    (torch initialises each thread's OpenMP pool from this setting); workers should
    also call torch.set_num_threads(share) themselves to be explicit."""
    import torch
    previous = torch.get_num_threads()
    share = threads_per_worker(workers, previous)
    torch.set_num_threads(share)
    try:
        yield share
    finally:
        torch.set_num_threads(previous)


class Stopped(BaseException):
    """Ends a worker's item at its next check once the work is given up (in_order)."""


def in_order(run: Callable, items: list, workers: int, stop):
    """(item, run(item)) for each item, in order; with workers > 1, that many items at once
    in threads sharing torch's threads (split_threads: one each on a small machine), at
    most 2 x workers ahead of the one being consumed. Closing it early (an error, Ctrl-C)
    sets `stop` (a threading.Event, which `run` checks: raise Stopped), cancels the items
    not started and waits for the running ones to stop. The engine runs an image's
    batches of tiles through it (inference.tile_workers)."""
    if workers == 1:
        for item in items:
            yield item, run(item)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from magncli.attention import carry_compile_state

    run_in_worker = carry_compile_state(run)
    with split_threads(workers) as share:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="magn-tiles",
                                  initializer=torch.set_num_threads, initargs=(share,))
        try:
            pending: deque = deque()
            for item in items:
                pending.append((item, pool.submit(run_in_worker, item)))
                if len(pending) >= 2 * workers:
                    done_item, future = pending.popleft()
                    yield done_item, future.result()
            while pending:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
