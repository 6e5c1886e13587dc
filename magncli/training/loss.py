"""What a training step minimises (the loss) and at what rate (the learning-rate schedule),
each a pure function of its inputs, so that a resumed run needs no state for them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from magncli.training.config import TrainConfig

# psnr-gain: added to both errors (100 dB), so that a lossless sample counts as a tie.
PSNR_GAIN_EPS = 1e-10


def training_loss(restored: Tensor, clean: Tensor, degraded: Tensor, kind: str = "mse",
                  relative_floor: float = 1e-5) -> Tensor:
    """restored, clean, degraded (b, C, p, p) -> the scalar loss.

    mse: the paper's (eq. 14). relative-mse: each sample's MSE over its degraded input's
    MSE plus relative_floor (the default, 1e-5, is 50 dB: a nearly lossless input does
    not get an unbounded weight), averaged: every level counts alike in dB, down to the
    floor. With plain MSE over q5-100 a q95
    patch's error is about 1/300 of a q10 patch's, so a whole-range model learns the
    high qualities hardly at all (measured: an early model made q90-95 files worse).
    psnr-gain: the mean over samples of 10 log10(that ratio), i.e. minus the PSNR gain
    in dB, the number the benchmarks report. Its gradient is each sample's MSE gradient
    over its own error, so a sample the model makes much worse than its input weighs no
    more than any other, where relative-mse gave it a gradient 100-1000x the usual (the
    spikes of the whole-range JPEG runs)."""
    if kind == "mse":
        return F.mse_loss(restored, clean)
    per_sample = (restored - clean).pow(2).mean((1, 2, 3))                    # (b,)
    input_error = (degraded.float() - clean).pow(2).mean((1, 2, 3))            # (b,)
    if kind == "psnr-gain":
        return (10 * torch.log10((per_sample + PSNR_GAIN_EPS) / (input_error + PSNR_GAIN_EPS))).mean()
    return (per_sample / (input_error + relative_floor)).mean()


def lr_factor(config: TrainConfig, step: int) -> float:
    """Learning rate / config.lr at `step` (a pure function, so resuming needs no state):
    linear warmup, then cosine down to min_lr, multistep decay, or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        floor = min(1.0, config.min_lr / config.lr)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "multistep":
        return config.gamma ** sum(step >= m for m in config.milestones)
    return 1.0
