"""Which device and which precision: the names a user gives ("auto", "cuda:1", "bf16")
checked against this machine and resolved, for inference and training alike.
"""
from __future__ import annotations

import torch

from magncli.errors import MagnError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must exist."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise MagnError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MagnError(f"device={spec} was asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MagnError(f"device={spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MagnError("device=mps was asked for, but MPS is not available")
    elif device.type != "cpu":
        raise MagnError(f"unsupported device {spec!r}")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): oneDNN says so."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_description() -> str:
    """The CPU in a few words, for benchmark records: timings (and whether bf16 runs on
    AMX tiles or AVX512 vectors) differ between CPUs, so a figure names the one it ran on."""
    import os
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    bf16 = [label for flag, label in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return f"{name}, {os.cpu_count()} cores" + (f", {' + '.join(bf16)}" if bf16 else "")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of `precision` on `device`: bf16 on CUDA and on CPUs with native
    bf16 (elsewhere it is emulated and slower than fp32); fp16 on CUDA only."""
    if precision not in PRECISIONS:
        raise MagnError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        raise MagnError("precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX) "
                        "or a CUDA device; this CPU would emulate it, slower than fp32")
    if precision == "fp16" and device.type != "cuda":
        raise MagnError(f"precision fp16 needs a CUDA device (got {device.type})")
    return PRECISIONS[precision]
