"""Mean-threshold masked graph attention (MAGN eq. 5-7) and its exact backends.

For queries q_i, keys k_j and values v_j of one head (head dimension d):

    S_ij = q_i . k_j / sqrt(d)
    t_i  = q_i . mean_j(k_j) / sqrt(d)        the row mean of S, computed without S
    A_ij = softmax over {j : S_ij >= t_i - eps_i} of S_ij, and 0 elsewhere
    out_i = sum_j A_ij v_j

eps_i = 1e-4 * (|t_i| + 1) keeps rows whose scores all equal their mean (a flat image)
from being masked entirely by rounding (see docs: "flat-image" decision). t is not
differentiated through: the mask is a step function.

Backends, all computing the same function:
- "reference": materialises the (m x n) score matrix. Tests and tiny graphs only.
- "chunked":   blocks of whole query rows, sized to a memory budget, with a custom
               backward that recomputes each block (flash-attention style), so memory
               is O(block x n) in training too; compiled with --compile.
- "sdpa":      in training, the mask is computed in fp32 for a block of query rows (one
               matmul and a compare, no gradient), then torch's fused
               scaled_dot_product_attention takes it as a boolean attn_mask: a blocked
               softmax in C++ with an exact backward, about 2x faster than "chunked".
               Without gradients (inference), each block's fp32 scores are masked and
               softmaxed instead, which computes them once, not twice: the scale and the
               threshold are folded into the product (q' = [q / sqrt(d), -t], k' = [k, 1],
               so q'.k' = S - t; softmax does not see a per-row shift) and the mask is one
               in-place threshold, in blocks that stay in the cache.
               Memory O(rows x n). The CPU default.
- "flex":      torch.nn.attention.flex_attention with a score_mod that sends masked
               entries to -inf. Fused on CUDA; the CUDA default.

    out = graph_attention(q, k, v)          # q (B, h, m, d), k (B, h, n, d), v (B, h, n, dv)
"""
from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import Tensor

BACKENDS = ("reference", "chunked", "sdpa", "flex")
# Score bytes one chunk may hold (fp32 scores + their exp and mask), per (batch x head).
DEFAULT_CHUNK_BYTES = int(os.environ.get("MAGN_ATTENTION_CHUNK_MB", "64")) * 2**20
# Inference blocks are kept smaller: their scores are read and written three times, and
# 8-16 MiB blocks were the fastest for a 4096-node graph (bench_attention.py --block-mb).
INFERENCE_BLOCK_BYTES = 12 * 2**20
_THRESHOLD_REL_EPS = 1e-4


def mean_threshold(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """t_i - eps_i, in fp32 and detached: (B, h, m, 1).

    The row mean of S is linear in k, so it costs one (m x d) product instead of (m x n).
    """
    k_mean = k.detach().float().mean(dim=-2, keepdim=True)                    # (B, h, 1, d)
    t = (q.detach().float() * k_mean).sum(-1, keepdim=True) * scale            # (B, h, m, 1)
    return t - _THRESHOLD_REL_EPS * (t.abs() + 1.0)


def graph_attention(q: Tensor, k: Tensor, v: Tensor, backend: Optional[str] = None,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """Masked graph attention. q (B,h,m,d), k (B,h,n,d), v (B,h,n,dv) -> (B,h,m,dv)."""
    if backend is None or backend == "auto":
        backend = default_backend(q.device)
    if backend == "reference":
        return reference_attention(q, k, v)
    if backend == "chunked":
        return chunked_attention(q, k, v, chunk_bytes=chunk_bytes)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, chunk_bytes=chunk_bytes)
    if backend == "flex":
        return flex_attention_backend(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")


def default_backend(device: torch.device) -> str:
    """flex on CUDA (fused kernel), sdpa elsewhere (flex materialises on CPU)."""
    forced = os.environ.get("MAGN_ATTENTION")
    if forced:
        return forced
    return "flex" if device.type == "cuda" and _flex_available() else "sdpa"


def rows_per_chunk(batch_heads: int, n_keys: int, chunk_bytes: int, bytes_per_score: int = 12) -> int:
    """Query rows per block so that a block's (rows x n_keys) temporaries, for every
    batch x head, fit in chunk_bytes. The one sizing rule of every blocked attention
    (these backends and the DAGL/PANet ones). bytes_per_score: 12 for three fp32
    temporaries (scores, mask, probabilities)."""
    per_row = max(1, batch_heads * n_keys * bytes_per_score)
    return max(1, chunk_bytes // per_row)


# --------------------------------------------------------------------------- reference
def reference_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Materialised (m x n) scores; O(m n) memory. Tests and tiny graphs only."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    threshold = mean_threshold(q, k, scale)                                    # (B, h, m, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale                      # (B, h, m, n)
    scores = scores.masked_fill(scores.float() < threshold, float("-inf"))
    attn = torch.softmax(scores.float(), dim=-1).to(v.dtype)                   # (B, h, m, n)
    return torch.matmul(attn, v)                                               # (B, h, m, dv)


# --------------------------------------------------------------------------- chunked
log = logging.getLogger("magn")
# Whether to compile is set per thread by compiled_chunks() (the inference engine
# decides per image): images restored at once in threads (restore --jobs) must not
# switch each other's blocks between compiled and eager half-way through an image.
_compile_state = threading.local()
_compiled_block = None
_compile_failed = False
_compile_lock = threading.Lock()


@contextmanager
def compiled_chunks(enabled: bool = True):
    """Run the chunked backend's blocks through torch.compile inside this context.

    Fusing mask, exp and sum over the (rows x n) scores is about 3.7x faster on CPU, after
    a one-off compilation of ~20 s; worth it for many tiles, not for one small image.
    Falls back to eager (once, with a warning) if compilation fails, e.g. with no C++
    compiler on the machine."""
    previous = getattr(_compile_state, "enabled", False)
    _compile_state.enabled = enabled
    try:
        yield
    finally:
        _compile_state.enabled = previous


def carry_compile_state(fn: Callable) -> Callable:
    """fn, run in any thread as compiled_chunks is set in this one (the state is per
    thread): for work handed to other threads, such as the engine's tile workers."""
    enabled = getattr(_compile_state, "enabled", False)

    def run(*args, **kwargs):
        with compiled_chunks(enabled):
            return fn(*args, **kwargs)
    return run


def _block_scores(q_blk: Tensor, k: Tensor, thr_blk: Tensor, scale: float) -> Tensor:
    """Masked fp32 scores of a block of query rows: (B, h, r, n), -inf where masked."""
    scores = torch.matmul(q_blk, k.transpose(-1, -2)) * scale                 # (B, h, r, n)
    return torch.where(scores < thr_blk, float("-inf"), scores)


def _block_forward(q_blk: Tensor, k: Tensor, v: Tensor, thr_blk: Tensor, scale: float):
    """One block of whole rows: (normalised output (B,h,r,dv), log-sum-exp (B,h,r,1)), fp32."""
    scores = _block_scores(q_blk, k, thr_blk, scale)
    row_max = scores.amax(dim=-1, keepdim=True)
    probs = torch.exp(scores - row_max)
    row_sum = probs.sum(dim=-1, keepdim=True)
    # Normalise the (r x dv) output rather than the (r x n) probabilities.
    return torch.matmul(probs, v) / row_sum, row_max + row_sum.log()


def _run_block(q_blk, k, v, thr_blk, scale):
    global _compiled_block, _compile_failed
    if getattr(_compile_state, "enabled", False) and not _compile_failed:
        try:
            with _compile_lock:
                if _compiled_block is None:
                    _compiled_block = torch.compile(_block_forward, dynamic=True)
            return _compiled_block(q_blk, k, v, thr_blk, scale)
        except Exception as e:  # any backend/compiler failure: stay correct, just slower
            _compile_failed = True
            log.warning("torch.compile of the attention blocks failed (%s); using eager blocks",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    return _block_forward(q_blk, k, v, thr_blk, scale)


class _ChunkedAttention(torch.autograd.Function):
    """Forward and backward over blocks of query rows; saves only q, k, v, out and the
    per-row log-sum-exp, and recomputes each block's probabilities in backward."""

    @staticmethod
    def forward(ctx, q, k, v, threshold, rows):
        scale = 1.0 / math.sqrt(q.shape[-1])
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
        lse = torch.empty(*q.shape[:-1], 1, dtype=torch.float32, device=q.device)
        q32, k32, v32 = q.float(), k.float(), v.float()
        for start in range(0, q.shape[-2], rows):
            blk = slice(start, start + rows)
            out[..., blk, :], lse[..., blk, :] = _run_block(q32[..., blk, :], k32, v32,
                                                            threshold[..., blk, :], scale)
        ctx.save_for_backward(q, k, v, threshold, out, lse)
        ctx.rows, ctx.scale = rows, scale
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, threshold, out, lse = ctx.saved_tensors
        rows, scale = ctx.rows, ctx.scale
        k32, v32, g32 = k.float(), v.float(), grad_out.float()
        dq = torch.zeros_like(q, dtype=torch.float32)
        dk = torch.zeros_like(k, dtype=torch.float32)
        dv = torch.zeros_like(v, dtype=torch.float32)
        # Softmax backward: dS = P * (dP - rowsum(dO * O)), with dP = dO V^T.
        row_dot = (g32 * out).sum(-1, keepdim=True)                            # (B, h, m, 1)
        for start in range(0, q.shape[-2], rows):
            blk = slice(start, start + rows)
            q_blk = q[..., blk, :].float()
            probs = torch.exp(_block_scores(q_blk, k32, threshold[..., blk, :], scale) - lse[..., blk, :])
            g_blk = g32[..., blk, :]
            dv += torch.matmul(probs.transpose(-1, -2), g_blk)
            d_scores = probs * (torch.matmul(g_blk, v32.transpose(-1, -2)) - row_dot[..., blk, :])
            dq[..., blk, :] = torch.matmul(d_scores, k32) * scale
            dk += torch.matmul(d_scores.transpose(-1, -2), q_blk) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """Exact attention in blocks of whole query rows: memory O(rows x n), never O(m x n)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    threshold = mean_threshold(q, k, scale)
    rows = rows_per_chunk(q.shape[0] * q.shape[1], k.shape[-2], chunk_bytes)
    return _ChunkedAttention.apply(q, k, v, threshold, rows)


# --------------------------------------------------------------------------- sdpa
def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """Exact masked attention through F.scaled_dot_product_attention, in query blocks.

    The mask of a block is computed from q and k in fp32 whatever their dtype, so the
    kept set is the one the fp32 threshold defines (bf16 q/k are upcast, not rounded
    again); the softmax inside SDPA accumulates in fp32. Each row keeps at least its
    maximum (the threshold's eps), so no row is fully masked."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    threshold = mean_threshold(q, k, scale)                                    # (B, h, m, 1) fp32
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return _masked_softmax_blocks(q, k, v, threshold, scale, chunk_bytes)
    k32_t = k.detach().float().transpose(-1, -2)                               # (B, h, d, n)
    # A bool mask is 1 byte a score; the fp32 scores that make it are 4.
    rows = rows_per_chunk(q.shape[0] * q.shape[1], k.shape[-2], chunk_bytes, bytes_per_score=5)
    outs = []
    for start in range(0, q.shape[-2], rows):
        q_blk = q[..., start:start + rows, :]                                  # (B, h, r, d)
        with torch.no_grad():
            keep = torch.matmul(q_blk.detach().float(), k32_t) * scale >= threshold[..., start:start + rows, :]
        outs.append(torch.nn.functional.scaled_dot_product_attention(q_blk, k, v, attn_mask=keep, scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)             # (B, h, m, dv)


def _masked_softmax_blocks(q: Tensor, k: Tensor, v: Tensor, threshold: Tensor, scale: float,
                           chunk_bytes: int) -> Tensor:
    """Inference: per block of query rows, fp32 scores shifted by their threshold, masked
    and softmaxed, then the product with v in v's dtype.

    The threshold rides in the product as one more feature (q' = [q * scale, -t],
    k' = [k, 1], so q'.k' = S - t), and the mask is one in-place pass keeping what is
    above zero: two passes over the (rows x n) scores fewer than scale, compare and fill.
    A 4096-node graph (4 tiles, d 48, bf16, 2 threads) takes 0.11 s, against 0.64 with
    the scores materialised (benchmarks/bench_attention.py)."""
    q_shifted = torch.cat([q.float() * scale, -threshold], dim=-1)            # (B, h, m, d+1) fp32
    ones = torch.ones(*k.shape[:-1], 1, dtype=torch.float32, device=k.device)
    k_shifted_t = torch.cat([k.float(), ones], dim=-1).transpose(-1, -2)      # (B, h, d+1, n) fp32
    # fp32 scores and their softmax (4 + 4 bytes) and its copy in v's dtype (<= 4).
    rows = rows_per_chunk(q.shape[0] * q.shape[1], k.shape[-2], min(chunk_bytes, INFERENCE_BLOCK_BYTES),
                          bytes_per_score=12)
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)  # (B, h, m, dv)
    for start in range(0, q.shape[-2], rows):
        blk = slice(start, start + rows)
        shifted = torch.matmul(q_shifted[..., blk, :], k_shifted_t)           # (B, h, r, n): S - t
        torch.nn.functional.threshold_(shifted, 0.0, float("-inf"))           # keep S > t
        out[..., blk, :] = torch.matmul(torch.softmax(shifted, dim=-1).to(v.dtype), v)
    return out


# --------------------------------------------------------------------------- flex
def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_compiled_flex = None


def flex_attention_backend(q: Tensor, k: Tensor, v: Tensor, compiled: Optional[bool] = None) -> Tensor:
    """torch flex_attention; the threshold is a captured per-query tensor in score_mod.

    mask_mod cannot see scores, so the data-dependent mask goes into score_mod. The
    fused kernel wants power-of-two head dims >= 16: q/k/v are zero-padded (zeros add
    nothing to dot products) and the scale is passed explicitly.
    """
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    d, dv = q.shape[-1], v.shape[-1]
    scale = 1.0 / math.sqrt(d)
    threshold = mean_threshold(q, k, scale).squeeze(-1)                        # (B, h, m)
    if compiled is None:
        compiled = q.is_cuda

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(score >= threshold[b, h, q_idx], score, float("-inf"))

    qp, kp, vp = q, k, v
    if compiled:
        d_pad, dv_pad = _pow2_at_least(d), _pow2_at_least(dv)
        if d_pad != d:
            qp = torch.nn.functional.pad(q, (0, d_pad - d))
            kp = torch.nn.functional.pad(k, (0, d_pad - d))
        if dv_pad != dv:
            vp = torch.nn.functional.pad(v, (0, dv_pad - dv))
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    else:
        fn = flex_attention
    out = fn(qp, kp, vp, score_mod=score_mod, scale=scale)
    return out[..., :dv]


def _pow2_at_least(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())
