"""Reading and writing model checkpoints, without pickle code execution.

Two formats are read:
- safetensors (the project's own format): tensors plus string metadata; the metadata
  key "magn" holds JSON with at least {"arch": ..., "config": {...}} so that the file
  alone rebuilds its model.
- plain PyTorch state_dict files (.pt/.pth, e.g. the official DAGL/PANet releases),
  read with torch.load(weights_only=True): tensors and containers only, never objects.

    sd, meta = read_checkpoint(path)            # dict[str, Tensor], dict
    model = model_from_checkpoint(path)         # built from meta or recognised from keys
    save_checkpoint(path, model, extra_meta)    # atomic safetensors write
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from magncli.errors import MagnError
from magncli.fileio import atomic_path
from magncli.models.registry import FILE_KEYS, build_model, detect_arch, get_arch

META_KEY = "magn"
_PT_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}
# Containers that training scripts commonly wrap a state_dict in.
_WRAPPER_KEYS = ("state_dict", "model", "params", "params_ema", "model_state_dict")


def read_checkpoint_meta(path) -> dict:
    """The metadata of a safetensors checkpoint (its step, provenance, ...), without reading
    its tensors; {} for a torch state_dict, which has none."""
    path = Path(path)
    if not path.is_file():
        raise MagnError(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MagnError(f"{path}: not a readable safetensors file ({e})") from None
    if META_KEY not in raw_meta:
        return {}
    try:
        return json.loads(raw_meta[META_KEY])
    except json.JSONDecodeError:
        raise MagnError(f"{path}: corrupt '{META_KEY}' metadata") from None


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint file (safetensors or a torch state_dict)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        meta = read_checkpoint_meta(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise MagnError(f"{path}: not a readable safetensors file ({e})") from None
        return state, meta
    if not path.is_file():
        raise MagnError(f"{path}: checkpoint not found")
    if path.suffix in _PT_SUFFIXES:
        return _unwrap_state_dict(_torch_load_tensors(path), path), {}
    raise MagnError(f"{path}: unknown checkpoint format {path.suffix!r} "
                    "(expected .safetensors, .pt or .pth)")


_NOT_PLAIN = ("not a plain state_dict ({why}); magn reads tensors only and never runs a "
              "checkpoint's code: save the weights as safetensors "
              "(safetensors.torch.save_file(model.state_dict(), PATH))")


def _torch_load_tensors(path: Path):
    """torch.load(weights_only=True), with messages that say what the file is not, and
    never torch's advice to retry with weights_only=False (which runs the file's code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise MagnError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        raise MagnError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        looks = " (it looks like text)" if _is_text(head) else ""
        raise MagnError(f"{path}: not a PyTorch checkpoint{looks}: neither the zip archive "
                        "that torch.save writes nor a pickle")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # torch's multi-line pickle notes
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = (f"loading it would call Python code: {blocked.group(1)}" if blocked else
               "a pickle of Python objects other than tensors, or a damaged one")
        raise MagnError(f"{path}: " + _NOT_PLAIN.format(why=why)) from None
    except Exception as e:  # truncated zips, ...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = next((line for line in lines if "weights_only" not in line), type(e).__name__)
        raise MagnError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch >= 32 or ch in b"\t\n\r" for ch in head)


def _unwrap_state_dict(obj, path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            # DataParallel / DDP checkpoints prefix every key with "module.".
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module."):]: v for k, v in tensors.items()}
            return tensors
    raise MagnError(f"{path}: holds no state_dict of tensors")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source="checkpoint") -> None:
    """Load every key, exactly; a mismatch is a MagnError that names the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    # Integer weights cast to float load "fine" as rounded (mostly zero) values: a residual
    # network then returns its input, silently.
    not_float = [f"{k} ({str(state[k].dtype).replace('torch.', '')})" for k in own
                 if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or wrong or not_float:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                            ("not floating-point", not_float)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise MagnError(f"{source} does not fit {getattr(model, 'arch', type(model).__name__)}: "
                        + "; ".join(parts))
    _check_tied_values(model, own, state, source)
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))


def _check_tied_values(model: nn.Module, own: Mapping[str, torch.Tensor],
                       state: Mapping[str, torch.Tensor], source) -> None:
    """A tensor the model lists under several keys (a tied parameter, e.g. the one trunk
    PReLU of DAGL/PANet) receives every copy; they must agree, or the last one would
    silently win."""
    groups: Dict[tuple, list] = {}
    for k, v in own.items():
        if v.numel():
            groups.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(),
                               tuple(v.shape), v.stride()), []).append(k)
    for keys in groups.values():
        first = state[keys[0]]
        bad = [k for k in keys[1:] if not torch.equal(state[k].to(first.dtype), first)]
        if bad:
            hint = (" (build it with tie_trunk_prelu=False to load untied values)"
                    if "tie_trunk_prelu" in getattr(model, "config", {}) else "")
            raise MagnError(f"{source}: keys {keys[0]} and {bad[0]} are one tied parameter "
                            f"in {getattr(model, 'arch', type(model).__name__)} but the "
                            f"checkpoint gives them different values{hint}")


def checkpoint_arch(path, state: Mapping[str, torch.Tensor], meta: dict) -> Tuple[str, dict]:
    """(arch, config) of a checkpoint: from its metadata, else recognised from its keys."""
    if "arch" in meta:
        return meta["arch"], dict(meta.get("config", {}))
    try:
        return detect_arch(state)
    except ValueError as e:
        raise MagnError(f"{path}: {e}") from None


def model_from_checkpoint(path, arch: str = "auto", **config_overrides) -> nn.Module:
    """Build the checkpoint's model and load its weights strictly (fp32, CPU, eval mode)."""
    state, meta = read_checkpoint(path)
    if arch in (None, "", "auto"):
        arch, config = checkpoint_arch(path, state, meta)
    else:
        try:
            family = get_arch(arch).name                        # "magn-s-local" -> "magn"
        except KeyError as e:
            raise MagnError(f"{path}: {e.args[0]}") from None
        config = dict(meta.get("config", {})) if meta.get("arch") == family else {}
        if not config:
            try:
                detected_arch, detected = detect_arch(state)
                if detected_arch == family:
                    config = detected
            except ValueError:
                pass
        if arch != family:    # a named variant: its network, the file's inputs and options (strict load checks the rest)
            config = {key: value for key, value in config.items() if key in FILE_KEYS}
    config.update(config_overrides)
    try:
        model = build_model(arch, **config)
    except KeyError as e:
        raise MagnError(f"{path}: {e.args[0]}") from None
    load_state_dict_strict(model, state, source=str(path))
    model.checkpoint_meta = meta
    return model.float().eval()


def save_checkpoint(path, model: nn.Module, meta: Optional[dict] = None, half: bool = False) -> Path:
    """Write model weights + {"arch", "config", **meta} as safetensors, atomically."""
    return save_weights(path, model.state_dict(), {"arch": model.arch, "config": model.config, **(meta or {})},
                        half=half)


def save_weights(path, state: Mapping[str, torch.Tensor], meta: dict, half: bool = False) -> Path:
    """Write a state dict + its metadata (arch, config, ...) as safetensors, atomically;
    half: floating-point tensors as fp16 (the published files)."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous().clone()  # safetensors refuses shared storage
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path
