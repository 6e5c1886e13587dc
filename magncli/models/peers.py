"""DnCNN and FFDNet, the plain CNN denoisers a user would run instead of MAGN, in KAIR's
layouts (github.com/cszn/KAIR, models/network_dncnn.py and network_ffdnet.py, batch norm
merged): so that their published checkpoints load strictly and sit in the same `magn eval`
table as MAGN's, on the same inputs, through the same engine.

    DnCNN   y (B, c, H, W) -> y - body(y)                   body: n convs 3x3, ReLU between
    FFDNet  y (B, c + 1, H, W): the image and the sigma map -> the image
            unshuffle x2 (4c) + sigma/255 at half resolution (1) -> body -> 4c -> shuffle x2

Their state_dicts are `model.{0,2,4,...}.weight|bias` (the odd indices are the ReLUs).
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from magncli.level_maps import SIGMA_PLANE_UNIT
from magncli.models.blocks import conv3x3
from magncli.models.registry import ModelFacts, register_arch

_KEY = re.compile(r"model\.(\d+)\.(weight|bias)")


def plain_body(c_in: int, n_feats: int, c_out: int, n_convs: int) -> nn.Sequential:
    """conv3x3 (ReLU conv3x3) x (n_convs - 1): KAIR's sequential, BN merged into the convs."""
    layers = [conv3x3(c_in, n_feats), nn.ReLU(inplace=True)]
    for _ in range(n_convs - 2):
        layers += [conv3x3(n_feats, n_feats), nn.ReLU(inplace=True)]
    layers.append(conv3x3(n_feats, c_out))
    return nn.Sequential(*layers)


def _plain_layout(state: Mapping[str, Tensor]) -> Optional[tuple]:
    """(first conv's inputs, features, last conv's outputs, convs) of a KAIR plain CNN
    state_dict, or None when the keys are anything else."""
    indices = set()
    for key in state:
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        indices.add(int(match.group(1)))
    n = len(indices)
    if n < 3 or indices != set(range(0, 2 * n, 2)):
        return None
    if any(state[f"model.{i}.weight"].shape[-2:] != (3, 3) for i in indices):
        return None
    first, last = state["model.0.weight"], state[f"model.{2 * (n - 1)}.weight"]
    return int(first.shape[1]), int(first.shape[0]), int(last.shape[0]), n


def _detect_dncnn(state: Mapping[str, Tensor]) -> Optional[dict]:
    layout = _plain_layout(state)
    if layout is None or layout[0] != layout[2] or layout[0] not in (1, 3):
        return None
    return dict(in_channels=layout[0], n_feats=layout[1], n_convs=layout[3])


def _detect_ffdnet(state: Mapping[str, Tensor]) -> Optional[dict]:
    layout = _plain_layout(state)
    if layout is None or layout[2] not in (4, 12) or layout[0] != layout[2] + 1:
        return None
    return dict(in_channels=layout[2] // 4, n_feats=layout[1], n_convs=layout[3])


@register_arch("dncnn", dict(in_channels=1, n_feats=64, n_convs=20), detect=_detect_dncnn)
class DnCNN(nn.Module):
    """DnCNN (Zhang et al., TIP 2017): a plain CNN that predicts the noise (KAIR layout)."""

    def __init__(self, in_channels=1, n_feats=64, n_convs=20):
        super().__init__()
        self.model = plain_body(in_channels, n_feats, in_channels, n_convs)

    @property
    def facts(self) -> ModelFacts:
        # Its receptive field reaches n_convs pixels each way (one per 3x3 convolution).
        return ModelFacts(in_channels=self.model[0].in_channels, context=len(self.model) // 2 + 1)

    def forward(self, x: Tensor) -> Tensor:                                    # (B, c, H, W)
        return x - self.model(x)


@register_arch("ffdnet", dict(in_channels=3, n_feats=96, n_convs=12), detect=_detect_ffdnet)
class FFDNet(nn.Module):
    """FFDNet (Zhang et al., TIP 2018): a plain CNN at half resolution told sigma (KAIR layout)."""

    def __init__(self, in_channels=3, n_feats=96, n_convs=12):
        super().__init__()
        self.in_channels = in_channels
        self.model = plain_body(4 * in_channels + 1, n_feats, 4 * in_channels, n_convs)

    @property
    def facts(self) -> ModelFacts:
        # The map is sigma itself: blind use has nothing to give it. Tiles on even origins
        # keep its half-resolution grid; its reach is n_convs half-resolution pixels.
        return ModelFacts(in_channels=self.in_channels, size_multiple=2, level_input=True,
                          level_required=True, context=2 * (len(self.model) // 2 + 1))

    def forward(self, x: Tensor) -> Tensor:                                    # (B, c + 1, H, W)
        c = self.in_channels
        h, w = x.shape[-2:]
        # KAIR pads odd sizes by replication, then crops.
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")                  # (B, c + 1, H', W')
        image = F.pixel_unshuffle(x[:, :c], 2)                                 # (B, 4c, H'/2, W'/2)
        # Our map is sigma / SIGMA_PLANE_UNIT (level_maps); FFDNet's is sigma / 255.
        sigma = x[:, c:, ::2, ::2] * (SIGMA_PLANE_UNIT / 255.0)               # (B, 1, H'/2, W'/2)
        out = F.pixel_shuffle(self.model(torch.cat([image, sigma], 1)), 2)     # (B, c, H', W')
        return out[..., :h, :w]
