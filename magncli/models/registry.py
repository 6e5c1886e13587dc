"""The architecture registry: one name -> one constructor, its default config, and a
detector that recognises the architecture from a state_dict.

    build_model("magn", in_channels=1)      -> nn.Module with a `.config` dict
    detect_arch(state_dict)                 -> ("dagl", {...config...})

Every registered model takes (B, C, H, W) float images (about [0, 1]) and returns the
same shape; it pads internally to whatever multiple it needs. `model.config` is a plain
JSON-serialisable dict that, given back to build_model, rebuilds the same architecture;
checkpoints store it in their metadata.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

Detector = Callable[[Mapping[str, torch.Tensor]], Optional[dict]]


@dataclass
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    default_config: dict
    detect: Optional[Detector] = None
    doc: str = ""
    variants: Dict[str, dict] = field(default_factory=dict)


_ARCHS: Dict[str, ArchSpec] = {}


def register_arch(name: str, default_config: dict, detect: Optional[Detector] = None,
                  variants: Optional[Dict[str, dict]] = None):
    """Decorator: register a model class (or builder function) under `name`."""

    def wrap(builder):
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        _ARCHS[name] = ArchSpec(name, builder, dict(default_config), detect,
                                (builder.__doc__ or "").strip().split("\n")[0],
                                dict(variants or {}))
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers every architecture (one file per architecture).
    import magncli.models  # noqa: F401


def list_archs() -> Dict[str, ArchSpec]:
    _ensure_loaded()
    return dict(_ARCHS)


def get_arch(name: str) -> ArchSpec:
    _ensure_loaded()
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
    config.update(overrides)
    return spec.name, config


def build_model(name: str, **overrides) -> nn.Module:
    """Build architecture `name` (or a named variant) with config overrides."""
    arch, config = resolve_config(name, **overrides)
    model = get_arch(arch).builder(**config)
    model.arch = arch
    model.config = config
    return model


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, dict]:
    """Recognise the architecture and config from a state_dict's keys and shapes."""
    _ensure_loaded()
    for spec in _ARCHS.values():
        if spec.detect is None:
            continue
        config = spec.detect(state_dict)
        if config is not None:
            return spec.name, config
    raise ValueError("could not recognise the architecture from the checkpoint's keys "
                     f"(first keys: {', '.join(list(state_dict)[:4])}); pass --arch")
