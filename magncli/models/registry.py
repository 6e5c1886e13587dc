"""The architecture registry: one name -> one constructor, its default config, and a
detector that recognises the architecture from a state_dict; and the facts a model states
about itself for the inference engine.

    build_model("magn", in_channels=1)      -> nn.Module with a `.config` dict
    detect_arch(state_dict)                 -> ("dagl", {...config...})
    convert_checkpoint_channels("magn", sd, config, 1) -> the state_dict of a 1-channel twin (warm starts)
    grow_level_input("magn", sd, config)    -> the same function, now also taking a level map (warm starts)
    grow_global_graph("magn", sd, config, fresh) -> the same function, with the pixel graph at zero (warm starts)
    deepen("magn", sd, config, fresh, 6)    -> the same function with 6 ResBlocks a side (warm starts)
    facts(model)                            -> ModelFacts(in_channels=1, size_multiple=4, ...)

Every registered model takes (B, C, H, W) float images (about [0, 1]) and returns the
same shape (a model with `level_input` takes one more plane, the level map, and returns
C); it pads internally to whatever multiple it needs. `model.config` is a plain
JSON-serialisable dict that, given back to build_model, rebuilds the same architecture;
checkpoints store it in their metadata. Every registered model has a `facts` property
(a ModelFacts computed from its config): the engine reads those and never guesses.

Every architecture module is imported by magncli/models/__init__.py, which Python runs
before this module can be imported, so every architecture is registered before the first
lookup.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

Detector = Callable[[Mapping[str, torch.Tensor]], Optional[dict]]
# (state_dict, its config, the new in_channels) -> the state_dict of the same network
# for that many channels.
ChannelConverter = Callable[[Mapping[str, torch.Tensor], dict, int], Dict[str, torch.Tensor]]
Deepener = Callable[[Mapping[str, torch.Tensor], dict, Mapping[str, torch.Tensor], int], Dict[str, torch.Tensor]]
# (state_dict, its config) -> the state_dict of the same network taking a level map too.
LevelInputGrower = Callable[[Mapping[str, torch.Tensor], dict], Dict[str, torch.Tensor]]
# (state_dict, its config, a fresh model's state_dict) -> the same function with the global graph.
GlobalGraphGrower = Callable[[Mapping[str, torch.Tensor], dict, Mapping[str, torch.Tensor]], Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModelFacts:
    """What the inference engine needs to know about a model, stated by its architecture
    (as spandrel's descriptors state them) rather than guessed from its attributes."""

    in_channels: Optional[int] = None   # channels of the images it takes and returns; None: any
    size_multiple: int = 1              # tile origins snap to multiples of this, so that every
                                        # tile sees the model's own grid (e.g. MAGN's stride-4
                                        # patches) where the whole image has it
    half_precision: bool = True         # may run under bf16/fp16 autocast
    graph_attention: bool = False       # set_attention_backend(name) chooses its attention backend
    chop_protocol: str = "dagl-gray"    # its official forward_chop settings (official_protocols.PROTOCOLS)
    level_input: bool = False           # takes one more input plane after the image's channels: the
                                        # degradation level as Task.level_plane encodes it (a JPEG's
                                        # quality); returns the image's channels only
    level_required: bool = False        # the level map must say the level: "unknown" is refused
                                        # (FFDNet's map is sigma itself; it has no blind use)
    context: int = 0                    # its receptive field's reach in pixels, when it is
                                        # local (a plain CNN): tiles then overlap enough that
                                        # the blend keeps only pixels it saw in full (0: no bound)


# What a module that states nothing gets: any channel count, no grid, no backend to set.
PLAIN_MODULE = ModelFacts()


def facts(model) -> ModelFacts:
    """The facts `model` states (every registered architecture does). Any other module
    (a test's, one a Python user built) may state its own as a `facts` attribute; one
    that states none is assumed to take any channel count and to have no grid."""
    stated = getattr(model, "facts", None)
    return stated if isinstance(stated, ModelFacts) else PLAIN_MODULE


@dataclass
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    default_config: dict
    detect: Optional[Detector] = None
    doc: str = ""
    variants: Dict[str, dict] = field(default_factory=dict)
    convert_channels: Optional[ChannelConverter] = None
    deepen: Optional[Deepener] = None
    grow_level_input: Optional[LevelInputGrower] = None
    grow_global_graph: Optional[GlobalGraphGrower] = None


_ARCHS: Dict[str, ArchSpec] = {}


def register_arch(name: str, default_config: dict, detect: Optional[Detector] = None,
                  variants: Optional[Dict[str, dict]] = None,
                  convert_channels: Optional[ChannelConverter] = None,
                  deepen: Optional[Deepener] = None,
                  grow_level_input: Optional[LevelInputGrower] = None,
                  grow_global_graph: Optional[GlobalGraphGrower] = None):
    """Decorator: register a model class (or builder function) under `name`."""

    def wrap(builder):
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        _ARCHS[name] = ArchSpec(name, builder, dict(default_config), detect,
                                (builder.__doc__ or "").strip().split("\n")[0],
                                dict(variants or {}), convert_channels, deepen, grow_level_input,
                                grow_global_graph)
        return builder

    return wrap


def list_archs() -> Dict[str, ArchSpec]:
    return dict(_ARCHS)


# Config keys that a checkpoint fixes, whatever its variant: a variant names the network,
# the file says what it takes (channels, a level map) and which optional parameters it
# has (QK-norm's temperatures). A gray JPEG model with a level map and QK-norm is still
# magn-s-local.
FILE_KEYS = ("in_channels", "level_input", "qk_norm")


def get_arch(name: str) -> ArchSpec:
    base = name.split("-")[0] if name not in _ARCHS else name
    if base not in _ARCHS:
        known = ", ".join(sorted(_ARCHS))
        raise KeyError(f"unknown architecture {name!r} (known: {known})")
    return _ARCHS[base]


def resolve_config(name: str, **overrides) -> Tuple[str, dict]:
    """Full config for `name` (an arch or an arch variant such as 'magn-light')."""
    spec = get_arch(name)
    config = dict(spec.default_config)
    if name != spec.name:
        if name not in spec.variants:
            raise KeyError(f"unknown variant {name!r} of {spec.name!r} "
                           f"(known: {', '.join(sorted(spec.variants)) or 'none'})")
        config.update(spec.variants[name])
    unknown = set(overrides) - set(config)
    if unknown:
        raise KeyError(f"unknown config keys for {spec.name}: {', '.join(sorted(unknown))}")
    for key, value in overrides.items():
        _check_config_value(spec.name, key, value, config[key])
    config.update(overrides)
    return spec.name, config


def _check_config_value(arch: str, key: str, value, default) -> None:
    """A config value of the default's kind: a checkpoint's recorded config (or a recipe's
    [model]) with text for a number, or a negative size, would fail deep in the network
    with a TypeError or ZeroDivisionError that names neither the key nor the file."""
    if value is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int) or (default is None and key.endswith("heads")):
        least = 0 if key.endswith("blocks") else 1      # a count of blocks may be 0, a size may not
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        kind = f"an integer >= {least}"
    elif default is None:
        return
    elif isinstance(default, float):
        ok, kind = (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)), "a finite number"
    else:
        ok, kind = isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise ConfigError(f"config {key} of {arch} must be {kind}, not {value!r}")


class ConfigError(KeyError, ValueError):
    """A config that cannot build its architecture: a KeyError, as an unknown name is, so
    that every caller that reports those reports this too, and a ValueError, as the
    builders' own checks raise."""


def build_model(name: str, **overrides) -> nn.Module:
    """Build architecture `name` (or a named variant) with config overrides."""
    arch, config = resolve_config(name, **overrides)
    try:
        model = get_arch(arch).builder(**config)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:   # e.g. heads = 0
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"its config cannot build {arch} ({why})") from None
    model.arch = arch
    model.config = config
    return model


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, dict]:
    """Recognise the architecture and config from a state_dict's keys and shapes."""
    for spec in _ARCHS.values():
        if spec.detect is None:
            continue
        config = spec.detect(state_dict)
        if config is not None:
            return spec.name, config
    raise ValueError("could not recognise the architecture from the checkpoint's keys "
                     f"(first keys: {', '.join(list(state_dict)[:4])}); pass arch=NAME")


def convert_checkpoint_channels(name: str, state_dict: Mapping[str, torch.Tensor], config: dict,
                                in_channels: int) -> Dict[str, torch.Tensor]:
    """The weights of architecture `name` (config `config`) for `in_channels` instead of
    config["in_channels"]: a warm start across channel counts (e.g. a gray JPEG model
    from the color one), where the architecture says how (ValueError where it does not)."""
    spec = get_arch(name)
    if spec.convert_channels is None:
        raise ValueError(f"{spec.name} weights cannot change channel count "
                         f"({config.get('in_channels')} -> {in_channels})")
    return spec.convert_channels(state_dict, config, in_channels)


def deepen(name: str, state_dict: Mapping[str, torch.Tensor], config: dict,
           fresh_state: Mapping[str, torch.Tensor], n_resblocks: int) -> Dict[str, torch.Tensor]:
    """The weights of architecture `name` (config `config`) with `n_resblocks` residual
    blocks instead of config["n_resblocks"], computing the same function: a warm start of a
    deeper network from a trained one (e.g. the demosaicer, whose capacity its run used
    up). fresh_state: a newly built deeper model's weights, for what the new blocks need
    besides the identity. ValueError where the architecture cannot."""
    spec = get_arch(name)
    if spec.deepen is None:
        raise ValueError(f"{spec.name} weights cannot be deepened")
    return spec.deepen(state_dict, config, fresh_state, n_resblocks)


def grow_level_input(name: str, state_dict: Mapping[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    """The weights of architecture `name` (config `config`, without a level map) for the
    same network with `level_input`, computing the same function whatever the map says: a
    warm start of a level-conditioned model (a denoiser told sigma) from a blind one.
    ValueError where the architecture cannot."""
    spec = get_arch(name)
    if spec.grow_level_input is None:
        raise ValueError(f"{spec.name} weights cannot take a level map")
    if config.get("level_input"):
        raise ValueError(f"{spec.name} weights take a level map already")
    return spec.grow_level_input(state_dict, config)


def grow_global_graph(name: str, state_dict: Mapping[str, torch.Tensor], config: dict,
                      fresh_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The weights of architecture `name` (config `config`, local graph only) for the same
    network with the global (pixel) graph, computing the same function: a warm start of the
    both-levels variant from its local twin. fresh_state: a newly built model with the
    pixel graph, for the new graph's weights. ValueError where the architecture cannot."""
    spec = get_arch(name)
    if spec.grow_global_graph is None:
        raise ValueError(f"{spec.name} weights cannot grow a global graph")
    return spec.grow_global_graph(state_dict, config, fresh_state)
