"""PANet: Pyramid Attention Networks for Image Restoration (Mei et al., 2020).

A port of the official `PANET` model (github.com/SHI-Labs/Pyramid-Attention-Networks @
a267cf8, DN_RGB/CAR/Demosaic code/model/{panet,attention,common}.py, byte-identical in
the three). Labels such as "C2" name the facts of the official layout that a line
reproduces. state_dict() equals the official layout in order
(tests/test_official_nets.py, against fixtures made with the official code).

    x (B, c_in, H, W)
    f = head(x)                         conv3x3 c_in -> 64
    r = body(f) + f                     n/2 ResBlocks, PyramidAttention, n/2 ResBlocks, conv3x3
    y = tail(r)                         conv3x3 64 -> c_in; NO image residual (C1)

What differs from the official code (not in the maths):
- the pyramid attention is computed as matmuls on unfolded patches, in chunks of query
  positions sized to `PyramidAttention.score_budget_bytes`, instead of a conv2d with an
  (L, 32, 3, 3) weight producing the whole (L, H, W) score volume;
- the bicubic pyramid uses explicit floor sizes (= torch<=1.5 / recompute_scale_factor=True,
  the behaviour the checkpoints were trained with); `pyramid_resize="scale_factor"` gives
  what the unmodified official file computes under modern torch;
- the trunk PReLU is tied within one model, not across every model of the process (A1).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from magncli.attention import rows_per_chunk
from magncli.models._edsr_blocks import MeanShift, detect_edsr_like, trunk_blocks
from magncli.models.blocks import conv3x3
from magncli.models.registry import ModelFacts, register_arch

DEFAULT_SCORE_BUDGET = 256 * 2**20  # bytes of per-chunk score temporaries
PYRAMID_RESIZE_MODES = ("floor_size", "scale_factor")


def pyramid_attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           softmax_scale: float = 10.0, rows: Optional[int] = None,
                           budget_bytes: int = DEFAULT_SCORE_BUDGET) -> torch.Tensor:
    """softmax_L(scale * q k^T) v for one image, in chunks of query rows (fact C2).

    q (N, 288): zero-padded 3x3 query patches, one per position; k (L, 288): the
    L2-normalised key patches of all pyramid levels; v (L, D): value patches.
    Returns (N, D). Each query's softmax runs over all L keys, and a chunk holds whole
    rows, so chunking is exact; memory is O(rows x L). Float32 whatever the input dtype.
    """
    out_dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    n_q, n_k = q.shape[0], k.shape[0]
    rows = min(n_q, rows or rows_per_chunk(1, n_k, budget_bytes, bytes_per_score=4))  # one fp32 (r, L) buffer
    kt = k.t().contiguous()                                            # (288, L)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        # Training: out-of-place so autograd works (memory then grows with the graph).
        return torch.cat([torch.softmax((q[s:s + rows] @ kt) * softmax_scale, dim=1) @ v
                          for s in range(0, n_q, rows)]).to(out_dtype)
    # Inference: one (rows x L) buffer, allocated once and reused in place.
    buf = q.new_empty(rows, n_k)
    out = q.new_empty(n_q, v.shape[1])
    for s in range(0, n_q, rows):
        r = min(rows, n_q - s)
        a = torch.mm(q[s:s + r], kt, out=buf[:r]).mul_(softmax_scale)  # (r, L) scores, C2: x10
        a.sub_(a.amax(dim=1, keepdim=True)).exp_()                       # softmax over all L keys
        a.div_(a.sum(dim=1, keepdim=True))
        torch.mm(a, v, out=out[s:s + r])                                  # (r, D)
    return out.to(out_dtype)


def pyramid_attention_reference(q, k, v, softmax_scale=10.0):
    """The same with the whole (N x L) matrix materialised. Tests only."""
    return (torch.softmax((q.float() @ k.float().t()) * softmax_scale, dim=1) @ v.float()).to(v.dtype)


class BasicBlock(nn.Sequential):
    """1x1 conv + PReLU, its own PReLU (keys .0.weight/.0.bias, .1.weight)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 1), nn.PReLU())


class PyramidAttention(nn.Module):
    """Scale-agnostic non-local attention over a 5-level bicubic pyramid (fact C2).
    (B, 64, H, W) -> same. Keys: escape_NaN (buffer), conv_match_L_base, conv_match,
    conv_assembly."""

    score_budget_bytes = DEFAULT_SCORE_BUDGET  # per instance overridable

    def __init__(self, level: int = 5, channel: int = 64, reduction: int = 2, ksize: int = 3,
                 softmax_scale: float = 10.0, res_scale: float = 1.0,
                 resize: str = "floor_size"):
        super().__init__()
        if resize not in PYRAMID_RESIZE_MODES:
            raise ValueError(f"pyramid_resize must be one of {PYRAMID_RESIZE_MODES}, got {resize!r}")
        self.ksize, self.softmax_scale, self.res_scale, self.resize = ksize, softmax_scale, res_scale, resize
        self.scales = [1 - i / 10 for i in range(level)]   # 1.0, 0.9, ..., 0.6 as Python doubles
        self.register_buffer("escape_NaN", torch.tensor([1e-4]))      # min key norm
        self.conv_match_L_base = BasicBlock(channel, channel // reduction)   # queries 64 -> 32
        self.conv_match = BasicBlock(channel, channel // reduction)          # keys    64 -> 32
        self.conv_assembly = BasicBlock(channel, channel)                    # values  64 -> 64

    def _rescale(self, x: torch.Tensor, s: float) -> torch.Tensor:
        if self.resize == "floor_size":
            # C2/section 3: size floor(s*n), sampling step n_in/n_out (recompute_scale_factor=True)
            size = (math.floor(x.shape[2] * s), math.floor(x.shape[3] * s))
            return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        # the official call under modern torch: sampling step 1/s
        return F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        k, p = self.ksize, self.ksize // 2
        query = F.unfold(self.conv_match_L_base(x), k, padding=p)     # (B, 288, HW)
        keys, values = [], []
        for s in self.scales:                  # order 1.0 .. 0.6, each in raster order
            ref = x if s == 1 else self._rescale(x, s)                 # (B, 64, h_s, w_s)
            # C2: pad AFTER the embedding+PReLU (zero padding 1), (c, ky, kx) patch order
            keys.append(F.unfold(self.conv_match(ref), k, padding=p))       # (B, 288, h_s*w_s)
            values.append(F.unfold(self.conv_assembly(ref), k, padding=p))  # (B, 576, h_s*w_s)
        keys, values = torch.cat(keys, dim=2), torch.cat(values, dim=2)     # (B, ., L)
        out = []
        for i in range(B):                     # batch elements are independent
            kk = keys[i].t()                                                  # (L, 288)
            norm = torch.sqrt((kk * kk).sum(dim=1, keepdim=True))
            kk = kk / torch.max(norm, self.escape_NaN)                        # C2: max(|k|, 1e-4)
            y = pyramid_attention_core(query[i].t(), kk, values[i].t(), self.softmax_scale,
                                       budget_bytes=self.score_budget_bytes)  # (HW, 576)
            out.append(y.t())
        # C2: paste each weighted 3x3 value patch centred on its position = fold with
        # padding 1 (the official conv_transpose2d): overlaps SUMMED, not averaged; then /4.
        z = F.fold(torch.stack(out), (H, W), k, padding=p)                   # (B, 64, H, W)
        return z / 4 + x * self.res_scale


def _detect(state) -> Optional[dict]:
    cfg = detect_edsr_like(state, "conv_match_L_base.0.weight",
                           required=("sub_mean.weight", "add_mean.weight"))
    if cfg is not None:
        cfg["pyramid_resize"] = "floor_size"
    return cfg


@register_arch("panet",
               {"in_channels": 3, "n_resblocks": 80, "n_feats": 64, "tie_trunk_prelu": True,
                "pyramid_resize": "floor_size"},
               detect=_detect,
               variants={"panet-gray": {"in_channels": 1}})
class PANet(nn.Module):
    """PANet (2020) pyramid-attention restorer; official 'PANET' layout (DN_RGB/CAR/Demosaic)."""

    def __init__(self, in_channels: int = 3, n_resblocks: int = 80, n_feats: int = 64,
                 tie_trunk_prelu: bool = True, pyramid_resize: str = "floor_size"):
        super().__init__()
        half = n_resblocks // 2
        trunk = trunk_blocks(2 * half, n_feats, tie_trunk_prelu)              # A1
        self.sub_mean = MeanShift(sign=-1)                                     # A3: unused
        self.add_mean = MeanShift(sign=+1)                                     # A3: unused
        self.head = nn.Sequential(conv3x3(in_channels, n_feats))
        self.body = nn.Sequential(*trunk[:half],
                                  PyramidAttention(channel=n_feats, resize=pyramid_resize),
                                  *trunk[half:], conv3x3(n_feats, n_feats))
        self.tail = nn.Sequential(conv3x3(n_feats, in_channels))

    @property
    def facts(self) -> ModelFacts:
        # 3x3 patches at stride 1 and a resized pyramid: no grid for tiles to keep. The
        # official settings of EDSR's chop: DN_RGB for color models, CAR for gray ones.
        color = self.head[0].in_channels == 3
        return ModelFacts(in_channels=self.head[0].in_channels, size_multiple=1,
                          chop_protocol="panet-rgb" if color else "panet-car")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        return self.tail(self.body(f) + f)                                    # C1: feature skip
