"""DAGL: Dynamic Attentive Graph Learning for Image Restoration (Mou et al., ICCV 2021).

A port of the official `RR` model (github.com/jianzhangcs/DAGL @ 7ebfe6c, DN_Gray and
Demosaic model/dagl.py). Labels such as "B3" name the facts of the official layout
that a line reproduces. state_dict() equals the official layout key for key, shape for
shape, in order, and the forward pass reproduces the official outputs
(tests/test_official_nets.py, against fixtures made with the official code).

    x (B, c_in, H, W)
    f = head(x)                         conv3x3 c_in -> 64
    f = body(f)                         n/2 ResBlocks, CES, n/2 ResBlocks, conv3x3
    y = x + tail(f)                     conv3x3 64 -> c_in; image-space residual (B1)

Any H, W works (no padding to a multiple; official testing used tiles whose sides are
multiples of 4, see magncli.official_protocols.forward_chop).

What differs from the official code (not in the maths):
- the graph attention is computed in chunks of query rows sized to a memory budget
  (`CE.score_budget_bytes`) instead of materialising the (HW/16 x HW) adjacency;
- the trunk PReLU is tied within one model, not across every model of the process (A1).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from magncli.attention import rows_per_chunk
from magncli.models._edsr_blocks import MeanShift, ResBlock, detect_edsr_like, trunk_blocks
from magncli.models.blocks import conv3x3
from magncli.models.registry import ModelFacts, register_arch

DEFAULT_SCORE_BUDGET = 256 * 2**20  # bytes of per-chunk score temporaries


def same_padding(h: int, w: int, k: int, s: int) -> Tuple[int, int, int, int]:
    """TensorFlow 'same' padding as (left, right, top, bottom), for F.pad (fact B3).

    Output count ceil(n/s); total pad max(0, (ceil(n/s)-1)*s + k - n); the top/left side
    gets floor(total/2). For k=7, s=4: top pad 1 (n%4==0), 3 (n%4==1), 2 (n%4 in 2, 3).
    """
    def one(n):
        total = max(0, (math.ceil(n / s) - 1) * s + k - n)
        return total // 2, total - total // 2

    top, bottom = one(h)
    left, right = one(w)
    return left, right, top, bottom


def dynamic_knn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          thr: torch.Tensor, beta: torch.Tensor, softmax_scale: float = 10.0,
                          rows: Optional[int] = None,
                          budget_bytes: int = DEFAULT_SCORE_BUDGET) -> torch.Tensor:
    """DAGL's dynamic-KNN graph attention (fact B3), one image, in chunks of query rows.

    q (Lq, d) and k (Lk, d) are the ReLU'd patch embeddings, v (Lk, D) the value patches,
    thr and beta (Lq,) the per-query threshold parameters. Returns (Lq, D):

        M      = q k^T                                  (Lq, Lk), >= 0
        margin = ReLU(M - mean_j(M) * thr + beta)       mean over ALL Lk keys of the row
        A      = softmax_j(scale * M * margin) * [margin != 0]
        out    = A v

    Each chunk holds whole rows, so the row mean and the softmax are exact per chunk and
    memory is O(rows x Lk), never O(Lq x Lk). (The mean is also linear,
    mean_j(q.k_j) = q.mean_j(k_j), but the chunk has the row, so we take it from M like
    the official code does.) Scores are computed in float32 whatever the input dtype.
    """
    out_dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    thr, beta = thr.float().view(-1, 1), beta.float().view(-1, 1)
    n_q, n_k = q.shape[0], k.shape[0]
    # Temporaries per score entry: M (4 bytes), margin (4), pruned mask (1).
    rows = min(n_q, rows or rows_per_chunk(1, n_k, budget_bytes, bytes_per_score=9))
    kt = k.t().contiguous()                         # (d, Lk): lets mm write straight into out=
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, thr, beta)):
        # Training: plain out-of-place ops so autograd works (it keeps every chunk's
        # intermediates for backward anyway, so memory is not bounded here).
        out = []
        for s in range(0, n_q, rows):
            m = q[s:s + rows] @ kt                                          # (r, Lk)
            margin = F.relu(m - m.mean(dim=1, keepdim=True) * thr[s:s + rows] + beta[s:s + rows])
            a = torch.softmax(m * margin * softmax_scale, dim=1) * (margin != 0)
            out.append(a @ v)
        return torch.cat(out).to(out_dtype)

    # Inference: three (rows x Lk) buffers allocated once and reused in place, so the
    # peak is exactly rows * Lk * 9 bytes whatever the allocator does with freed memory.
    m_buf = q.new_empty(rows, n_k)                  # M, then the logits, then A
    margin_buf = q.new_empty(rows, n_k)
    pruned_buf = torch.empty(rows, n_k, dtype=torch.bool, device=q.device)
    out = q.new_empty(n_q, v.shape[1])
    for s in range(0, n_q, rows):
        r = min(rows, n_q - s)
        m, margin, pruned = m_buf[:r], margin_buf[:r], pruned_buf[:r]
        torch.mm(q[s:s + r], kt, out=m)                                   # (r, Lk) adjacency M >= 0
        mean = m.mean(dim=1, keepdim=True)                                # over ALL Lk keys
        torch.sub(m, mean * thr[s:s + r], out=margin)
        margin.add_(beta[s:s + r]).relu_()                                # ReLU(M - mean*thr + beta)
        torch.eq(margin, 0, out=pruned)                                   # not mask_b
        # B3: logits are M * margin (not M alone); pruned entries enter the softmax with
        # logit 0 (they add exp(0) to the denominator) and are zeroed AFTER it, with no
        # renormalisation. A fully pruned row therefore comes out as zeros, never NaN.
        m.mul_(margin).mul_(softmax_scale)
        _softmax_(m).masked_fill_(pruned, 0)    # (m.mul_(bool) would make a float copy)
        torch.mm(m, v, out=out[s:s + r])                                  # (r, D)
    return out.to(out_dtype)


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Row softmax in place (no extra (rows x Lk) buffer)."""
    x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=1, keepdim=True))


def dynamic_knn_attention_reference(q, k, v, thr, beta, softmax_scale=10.0):
    """The same computation with the whole (Lq x Lk) matrix materialised. Tests only."""
    m = q.float() @ k.float().t()
    margin = F.relu(m - m.mean(dim=1, keepdim=True) * thr.view(-1, 1) + beta.view(-1, 1))
    a = torch.softmax(m * margin * softmax_scale, dim=1) * (margin != 0)
    return (a @ v.float()).to(v.dtype)


class CE(nn.Module):
    """One graph-attention head of DAGL's M-GFAM (fact B3). (B, 64, H, W) -> (B, 16, H, W).

    Keys, in official order: g, W (unused), theta, fc1.0, fc2.0, thr_conv, bias_conv.
    """

    score_budget_bytes = DEFAULT_SCORE_BUDGET  # per instance overridable

    def __init__(self, in_channels: int = 64, inter_channels: int = 16, ksize: int = 7,
                 stride: int = 4, softmax_scale: float = 10.0):
        super().__init__()
        self.ksize, self.stride, self.softmax_scale = ksize, stride, softmax_scale
        d = inter_channels * ksize * ksize                     # 16*7*7 = 784 per patch
        self.g = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)       # query+key embedding
        self.W = nn.Conv2d(inter_channels, in_channels, 1)             # B3: never applied
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)         # value embedding
        self.fc1 = nn.Sequential(nn.Linear(d, d // 4), nn.ReLU())     # queries 784 -> 196
        self.fc2 = nn.Sequential(nn.Linear(d, d // 4), nn.ReLU())     # keys    784 -> 196
        self.thr_conv = nn.Conv2d(in_channels, 1, ksize, stride, 0)    # per-query thr
        self.bias_conv = nn.Conv2d(in_channels, 1, ksize, stride, 0)   # per-query beta

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        B, _, H, W = b.shape
        k, s = self.ksize, self.stride
        pad = same_padding(H, W, k, s)          # stride-4 'same' padding (B3)
        e = self.g(b)                           # (B, 16, H, W): queries AND keys
        v = self.theta(b)                       # (B, 16, H, W): values
        b_pad = F.pad(b, pad)                   # B3: thr/beta see the padded 64-ch input
        thr = self.thr_conv(b_pad).flatten(1)   # (B, Lq), Lq = ceil(H/4)*ceil(W/4)
        beta = self.bias_conv(b_pad).flatten(1)
        # Per-pixel count of the patches folded back onto it (always >= 1).
        ones = torch.ones(1, 1, H, W, dtype=b.dtype, device=b.device)
        count = F.fold(F.unfold(ones, k, padding=k // 2, stride=s), (H, W), k,
                       padding=k // 2, stride=s)                       # (1, 1, H, W)
        out = []
        for i in range(B):                      # B3: images never interact
            # (c, ky, kx)-ordered 7x7 patches, as rows: queries stride 4, keys/values stride 1
            # (the (HW, 784) patch matrices are linear in HW, ~3 KiB per pixel each; the
            # key patches are freed before the value patches are cut)
            q = self.fc1(F.unfold(F.pad(e[i:i + 1], pad), k, stride=s)[0].t())   # (Lq, 196)
            kk = self.fc2(F.unfold(e[i:i + 1], k, padding=k // 2)[0].t())       # (HW, 196)
            vp = F.unfold(v[i:i + 1], k, padding=k // 2)[0].t()                # (HW, 784)
            y = dynamic_knn_attention(q, kk, vp, thr[i], beta[i], self.softmax_scale,
                                      budget_bytes=self.score_budget_bytes)     # (Lq, 784)
            # B3 offset quirk: fold back with SYMMETRIC padding 3, although the queries
            # were cut with the 'same' offset; overlaps summed, then averaged.
            z = F.fold(y.t().unsqueeze(0), (H, W), k, padding=k // 2, stride=s)  # (1, 16, H, W)
            out.append(z / count)
        return torch.cat(out)


class CES(nn.Module):
    """M-GFAM (fact B2): three stages of 4 CE heads, ResBlock groups between them.
    (B, 64, H, W) -> same. Key order: RBS1, RBS2, c1_1..c1_4, c1_c, c2_*, c3_*."""

    def __init__(self, n_feats: int = 64, num: int = 4):
        super().__init__()
        # These ResBlocks get the PReLU by keyword upstream: each has its own (A1).
        self.RBS1 = nn.Sequential(*[ResBlock(n_feats) for _ in range(num)])
        self.RBS2 = nn.Sequential(*[ResBlock(n_feats) for _ in range(num)])
        for stage in (1, 2, 3):
            for h in range(1, 5):
                setattr(self, f"c{stage}_{h}", CE(in_channels=n_feats))
            setattr(self, f"c{stage}_c", nn.Conv2d(n_feats, n_feats, 1))   # 64 -> 64, 1x1

    def _stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        heads = [getattr(self, f"c{s}_{h}")(x) for h in range(1, 5)]      # 4 x (B, 16, H, W)
        return getattr(self, f"c{s}_c")(torch.cat(heads, dim=1)) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._stage(1, x)
        out = self._stage(2, self.RBS1(out))
        return self._stage(3, self.RBS2(out))


def _detect(state) -> Optional[dict]:
    # DAGL = CE keys (thr_conv) in the middle block + a lone add_mean (PANet has sub_mean).
    cfg = detect_edsr_like(state, "c1_1.thr_conv.weight", required=("add_mean.weight",))
    if cfg is None or "sub_mean.weight" in state:
        return None
    return cfg


@register_arch("dagl",
               {"in_channels": 1, "n_resblocks": 16, "n_feats": 64, "tie_trunk_prelu": True},
               detect=_detect,
               variants={"dagl-demosaic": {"in_channels": 3, "n_resblocks": 32}})
class DAGL(nn.Module):
    """DAGL (ICCV 2021) graph-attention restorer; official 'RR' layout (gray/CAR/demosaic)."""

    def __init__(self, in_channels: int = 1, n_resblocks: int = 16, n_feats: int = 64,
                 tie_trunk_prelu: bool = True):
        super().__init__()
        half = n_resblocks // 2
        trunk = trunk_blocks(2 * half, n_feats, tie_trunk_prelu)          # A1
        self.add_mean = MeanShift(sign=+1)                                 # A3: unused
        self.head = nn.Sequential(conv3x3(in_channels, n_feats))
        self.body = nn.Sequential(*trunk[:half], CES(n_feats), *trunk[half:],
                                  conv3x3(n_feats, n_feats))
        self.tail = nn.Sequential(conv3x3(n_feats, in_channels))

    @property
    def facts(self) -> ModelFacts:
        # Tiles at multiples of 4 keep the CE heads' stride-4 patch grid, as the official
        # test-time tiles did; its own settings for those (gray/CAR, or demosaic).
        color = self.head[0].in_channels == 3
        return ModelFacts(in_channels=self.head[0].in_channels, size_multiple=4,
                          chop_protocol="dagl-demosaic" if color else "dagl-gray")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.body(self.head(x)))                      # B1
