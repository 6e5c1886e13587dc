"""The inference engine's defaults, in a module that loads no torch: the engine's
options (inference.InferenceOptions) start from them, and so do the command line's
options, whose --help must not wait for torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class EngineDefaults:
    device: str = "auto"            # auto | cpu | cuda | cuda:N | mps
    # fp32 | bf16 | fp16; None: the checkpoint's CPU default (weights manifest, cpu_defaults)
    # where the CPU has native bf16 and the user gave none, else fp32
    precision: Optional[str] = None
    tile: Optional[int] = None      # None: the checkpoint's CPU tile, or automatic (CUDA: free memory)
    overlap: int = 16               # pixels between tiles
    ensemble: bool = False          # x8 flip/rotate self-ensemble
    tiling: str = "blend"           # blend | chop
    compile: Optional[bool] = None  # torch.compile the chunked attention; None: by the image's tiles


ENGINE = EngineDefaults()
