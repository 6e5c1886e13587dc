"""Building blocks shared by the DAGL and PANet ports (both descend from EDSR's common.py).

Not an architecture: nothing here is registered. Labels such as "A1", "B3" name the facts
of the official layouts that a line reproduces.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from magncli.models.blocks import conv3x3  # = EDSR's default_conv at kernel 3 (fact A2)

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, as in EDSR


class MeanShift(nn.Conv2d):
    """EDSR's fixed 1x1 colour shift. Kept only so that state_dicts match: the official
    forward never applies it (fact A3). Always 3 channels, even in gray models."""

    def __init__(self, sign: int, rgb_range: float = 1.0):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))             # std = 1
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """x + res_scale * conv3x3(PReLU(conv3x3(x)))   (fact A2)   (B, C, H, W) -> same.

    Keys: body.0 (conv), body.1 (PReLU, one scalar), body.2 (conv). Pass `act` to share
    one PReLU module between blocks (fact A1); default is a fresh one per block.
    """

    def __init__(self, n_feats: int, act: Optional[nn.PReLU] = None, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats),
                                  act if act is not None else nn.PReLU(),
                                  conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


def trunk_blocks(n_blocks: int, n_feats: int, tie_prelu: bool) -> list:
    """The trunk ResBlocks of DAGL/PANet.

    Fact A1: upstream, every trunk ResBlock uses the SAME PReLU (a default-argument object).
    With tie_prelu=True we register one nn.PReLU instance in every block: parameters()
    holds it once, state_dict() lists it under every `body.i.body.1.weight`, exactly like
    upstream. Unlike upstream, the sharing does not leak across model instances.
    tie_prelu=False gives independent PReLUs (same forward when the values are equal).
    """
    shared = nn.PReLU() if tie_prelu else None
    return [ResBlock(n_feats, act=shared) for _ in range(n_blocks)]


# ----------------------------------------------------------------------------- detection

def body_indices(state: Mapping[str, torch.Tensor], suffix: str) -> set:
    """{i : 'body.<i>.<suffix>' in state}"""
    pat = re.compile(r"body\.(\d+)\." + re.escape(suffix))
    return {int(m.group(1)) for k in state if (m := pat.fullmatch(k))}


def detect_edsr_like(state: Mapping[str, torch.Tensor], attn_key: str,
                     required: tuple) -> Optional[dict]:
    """Config of an EDSR-style trunk `head.0, body.0..n-1 ResBlocks with one attention
    block in the middle, body.<last> conv, tail.0`, or None if the keys do not fit.

    attn_key: a key suffix only the attention block has (e.g. 'c1_1.thr_conv.weight').
    required: top-level keys that must be present (e.g. the MeanShift weights).
    """
    if any(k not in state for k in ("head.0.weight", "tail.0.weight", *required)):
        return None
    attn = body_indices(state, attn_key)
    if len(attn) != 1:
        return None
    a = attn.pop()
    n = 2 * a                                               # n_resblocks // 2 on each side
    trunk = body_indices(state, "body.0.weight")
    if trunk != set(range(a)) | set(range(a + 1, n + 1)) or f"body.{n + 1}.weight" not in state:
        return None
    head = state["head.0.weight"]
    if head.ndim != 4 or state["tail.0.weight"].shape[0] != head.shape[1]:
        return None
    # Fact A1: checkpoints of the (tied) official model hold equal trunk PReLUs. If these
    # differ, the checkpoint came from an untied model: load it untied, exactly.
    prelus = [state[f"body.{i}.body.1.weight"] for i in sorted(trunk)
              if f"body.{i}.body.1.weight" in state]
    tied = all(torch.equal(p, prelus[0]) for p in prelus[1:]) if prelus else True
    return {"in_channels": int(head.shape[1]), "n_resblocks": n,
            "n_feats": int(head.shape[0]), "tie_trunk_prelu": tied}
