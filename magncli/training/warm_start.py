"""Warm starts: a trained file's weights made to fit this run's network, when the two are
the same network but for what an architecture knows how to grow, each growth computing
exactly what the file does (so the run starts from the file, not from noise):

    in_channels       1 <-> 3: the head's image inputs and the tail converted (gray JPEG from color)
    level_input       a level map's input added at zero (a denoiser told sigma, from a blind one)
    global graph      the pixel graph added with its value projection at zero (#34's study)
    n_resblocks       more ResBlocks a side, each starting as the identity (the deeper demosaicer)

They apply in that order, any together; anything else differing is refused in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

from magncli.checkpoints import load_state_dict_strict, read_checkpoint
from magncli.errors import MagnError
from magncli.models.registry import (convert_checkpoint_channels, deepen, grow_global_graph, grow_level_input,
                                     resolve_config)
from magncli.runs.folder import BEST_FILE, EXPORT_FILE, LATEST_FILE, first_warm_start

# What the global graph adds to a local-graph config ("magn-s-local" -> "magn-s").
GLOBAL_GRAPH_KEYS = ("global_graph", "pixel_heads", "pixel_graph_layers")


def filled_config(arch: str, config: dict) -> Optional[dict]:
    """A checkpoint's recorded config with the defaults filled in, so that files written
    before a config key existed compare equal; None if it does not fit `arch` at all."""
    try:
        return resolve_config(arch, **config)[1]
    except KeyError:
        return None


def differ_only_in(theirs: dict, own: dict, *keys: str) -> bool:
    """Whether two configs are the same network but for `keys` (what a warm start converts)."""
    return ({k: v for k, v in theirs.items() if k not in keys}
            == {k: v for k, v in own.items() if k not in keys})


def fit_weights(arch: str, state: Mapping[str, Tensor], theirs: dict, own: dict,
                fresh_state: Mapping[str, Tensor], source: str) -> Tuple[Dict[str, Tensor], Optional[str]]:
    """The file's weights (`state`, its filled config `theirs`) for this run's network
    (`own`; `fresh_state`: a newly built model's weights, for what a growth adds), and what
    was converted ("3 -> 1 channels, level map added", or None). MagnError where the
    networks differ in anything else."""
    done = []
    try:
        if theirs["in_channels"] != own["in_channels"] and differ_only_in(
                theirs, own, "in_channels", "level_input", *GLOBAL_GRAPH_KEYS, "n_resblocks"):
            state = convert_checkpoint_channels(arch, state, theirs, own["in_channels"])
            done.append(f"{theirs['in_channels']} -> {own['in_channels']} channels")
            theirs = dict(theirs, in_channels=own["in_channels"])
        if not theirs.get("level_input") and own.get("level_input") and differ_only_in(
                theirs, own, "level_input", *GLOBAL_GRAPH_KEYS, "n_resblocks"):
            state = grow_level_input(arch, state, theirs)
            done.append("level map added")
            theirs = dict(theirs, level_input=True)
        if not theirs.get("global_graph") and own.get("global_graph") and differ_only_in(
                theirs, own, *GLOBAL_GRAPH_KEYS, "n_resblocks"):
            state = grow_global_graph(arch, state, theirs, fresh_state)
            done.append("global graph added")
            theirs = dict(theirs, **{k: own[k] for k in GLOBAL_GRAPH_KEYS})
        if theirs.get("n_resblocks", 0) < own.get("n_resblocks", 0) and differ_only_in(theirs, own, "n_resblocks"):
            state = deepen(arch, state, theirs, fresh_state, own["n_resblocks"])
            done.append(f"{theirs['n_resblocks']} -> {own['n_resblocks']} ResBlocks a side")
            theirs = own
    except ValueError as e:
        raise MagnError(f"{source}: {e}") from None
    if theirs != own:
        raise MagnError(f"{source}: its architecture ({arch} {theirs}) is not this run's ({arch} {own})")
    return dict(state), ", ".join(done) or None


def load_warm_start(model: nn.Module, source: str) -> dict:
    """Warm start `model` (a newly built network) with the weights of a checkpoint file or
    published name, fitted to it (fit_weights); the optimizer starts fresh. Returns what
    the provenance records of it: the weights by name and sha256, their step, CPU time and
    commands, what was converted, and (nested as "from") how those weights began."""
    from magncli.weights import file_sha256, resolve_weights
    path = resolve_weights(source)
    state, meta = read_checkpoint(path)
    own = model.config
    theirs = filled_config(model.arch, meta["config"]) if meta.get("config") else None
    if meta.get("arch") not in (None, model.arch) or (meta.get("config") and theirs is None):
        raise MagnError(f"{source}: its architecture ({meta.get('arch')} {meta.get('config')}) "
                        f"is not this run's ({model.arch} {own})")
    converted = None
    if theirs is not None:
        state, converted = fit_weights(model.arch, state, theirs, own, model.state_dict(), source)
    load_state_dict_strict(model, state, source=str(path))
    provenance = meta.get("provenance") or {}
    weights = source if not Path(source).exists() else Path(source).name
    if weights in (LATEST_FILE, BEST_FILE, EXPORT_FILE):     # a run's own file: name the run too
        weights = f"{Path(source).resolve().parent.name}/{weights}"
    record = {"weights": weights,
              "sha256": file_sha256(path), "step": meta.get("step"),
              "cpu_s": float(provenance.get("cpu_hours", 0.0)) * 3600.0,
              "commands": provenance.get("command")}
    if converted:
        record["converted"] = converted
    # How those weights began, and so on back (each warm start's own record nests the
    # one before): a card can then name every run that made a checkpoint.
    earlier = first_warm_start(provenance)
    if earlier:
        record["from"] = earlier
    return record
