"""Default selection: which manifest checkpoint serves a task, channel count and level.

`magn restore` without weights asks "which model for gray images at sigma 25?"; the
answer is a policy (exact level over a blind range, the nearest one with a warning, the
entry flagged default), kept here apart from where the file then comes from.
"""
from __future__ import annotations

import logging
from typing import List, Optional

from magncli.errors import MagnError
from magncli.tasks import get_task
from magncli.weights.manifest import (Manifest, WeightsEntry, describe_channels, format_number,
                                      load_manifest)

log = logging.getLogger("magn")


def _level_distance(entry: WeightsEntry, level) -> float:
    if entry.level_range is not None:
        lo, hi = entry.level_range
        return max(lo - level, level - hi, 0)
    return min(abs(level - v) for v in entry.levels)


def select_default(task: str, channels: int, level=None, *, manifest: Optional[Manifest] = None) -> WeightsEntry:
    """The checkpoint that serves `task` on `channels`-channel images at `level`.

    With a known level, a model trained for exactly that level wins over a blind one whose
    range covers it; a level no model covers gets the nearest one, with a warning. Without
    a level: the entry flagged default, else a blind one, else the only one. A MagnError
    says what is missing and how to pass weights= instead.
    """
    key = get_task(task).level_key
    manifest = manifest or load_manifest()
    candidates = [e for e in manifest.entries if e.task == task and e.channels == channels]
    if not candidates:
        raise MagnError(f"no pretrained {task} model for {describe_channels(channels)} images yet; "
                        "pass weights=PATH")

    def prefer_default(entries: List[WeightsEntry]) -> WeightsEntry:
        return next((e for e in entries if e.default), entries[0])

    if key is not None and level is not None:
        exact = [e for e in candidates if not e.blind and level in e.levels]
        if exact:
            return prefer_default(exact)
        blind = [e for e in candidates if e.blind and e.serves(level)]
        if blind:
            return prefer_default(blind)
        # Out of every trained range (a quality-85 photo, sigma 70): a user still expects a
        # result, so use the nearest model and say so, rather than refusing.
        nearest = min(candidates, key=lambda e: (_level_distance(e, level), not e.default))
        log.warning("no pretrained %s model for %s images was trained for %s %s; using %s (%s), "
                    "the nearest", task, describe_channels(channels), key, format_number(level),
                    nearest.name, nearest.describe_levels())
        return nearest

    for group in ([e for e in candidates if e.default], [e for e in candidates if e.blind]):
        if group:
            return group[0]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(e.name for e in candidates)
    hint = f"give the {key} or " if key else ""
    raise MagnError(f"several pretrained {task} models for {describe_channels(channels)} images and none "
                    f"is the default; {hint}pick one with weights=NAME ({names})")

