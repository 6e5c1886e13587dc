"""Building blocks shared by the architectures."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 convolution, zero padding 1, bias on: MAGN's, and EDSR's default_conv at
    kernel 3 (the DAGL/PANet ports' fact A2)."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)


class ResBlock(nn.Module):
    """x + conv3x3(PReLU(conv3x3(x))): 64 channels, bias on, no BN (MAGN eq. 3)."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.act = nn.PReLU()
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom/right of (B, C, H, W) to multiples of `multiple`.

    Reflection keeps the image statistics at the border; it needs pad < size, so tiny
    images (1 or 2 pixels on a side) are padded by replication instead.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
