"""The x8 flip/rotate self-ensemble: the mean of a function over the 8 dihedral
transforms of its input, each output transformed back.

    y = self_ensemble(fn, x)                               # x (B, C, H, W)
    y = self_ensemble(fn, x, task.ensemble_input)          # an input a flip changes the meaning of

Most inputs mean the same flipped. A Bayer mosaic does not (a flipped GRBG mosaic is a
mosaic of another pattern): its task's ensemble_input hook (tasks.Task.ensemble_input)
puts each transform back into what the model reads, and the rows and columns it added
are cropped off fn's output. The engine knows no task: it passes the hook it was given.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

# (t: the k-th transform of the input, k, the input's (H, W)) -> (t as the model takes it,
# the (dy, dx) rows and columns to crop off the top and left of the model's output).
EnsembleInput = Callable[[Tensor, int, Tuple[int, int]], Tuple[Tensor, Tuple[int, int]]]


def dihedral(x: Tensor, k: int) -> Tensor:
    """The k-th of the 8 flips/rotations of (B, C, H, W): k >= 4 flips the columns, then
    the planes are rotated k % 4 quarter turns."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(x: Tensor, k: int) -> Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def self_ensemble(fn: Callable[[Tensor], Tensor], x: Tensor,
                  ensemble_input: Optional[EnsembleInput] = None) -> Tensor:
    """Mean of fn over the 8 dihedral transforms of x (B, C, H, W), each transformed back;
    ensemble_input: how fn takes each transform (see EnsembleInput), None: as it is."""
    out = 0  # fn may return fewer channels than x has (a level map goes in, not out)
    size = (x.shape[-2], x.shape[-1])
    for k in range(8):
        t = dihedral(x, k)                                                     # (B, C, H|W, W|H)
        dy = dx = 0
        if ensemble_input is not None:
            t, (dy, dx) = ensemble_input(t, k, size)                           # (B, C, +dy, +dx)
        out = out + dihedral_inverse(fn(t)[..., dy:, dx:].float(), k)
    return out / 8
