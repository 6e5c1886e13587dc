"""Every attention backend computes the reference's masked attention, forward and backward."""
import subprocess
import sys
import textwrap

import pytest
import torch

from magncli.attention import (chunked_attention, flex_attention_backend, graph_attention, reference_attention,
                               sdpa_attention)

SHAPES = [  # (B, heads, m queries, n keys, d, dv)
    (2, 4, 37, 37, 16, 16),
    (1, 4, 50, 23, 49, 196),   # the patch graph's head sizes
    (1, 1, 1, 1, 16, 16),      # a one-node graph
    (1, 2, 3, 2, 8, 5),
]


def _backends():
    return {
        "chunked-1row": lambda q, k, v: chunked_attention(q, k, v, chunk_bytes=1),
        "chunked-7rows": lambda q, k, v: chunked_attention(q, k, v, chunk_bytes=7 * 4 * 3 * k.shape[0] * k.shape[1] * k.shape[2]),
        "chunked-default": lambda q, k, v: chunked_attention(q, k, v),
        "sdpa-1row": lambda q, k, v: sdpa_attention(q, k, v, chunk_bytes=1),
        "sdpa-default": lambda q, k, v: sdpa_attention(q, k, v),
        "flex": lambda q, k, v: flex_attention_backend(q, k, v, compiled=False),
    }


def _inputs(shape, seed=0, requires_grad=False):
    b, h, m, n, d, dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, m, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g)
    v = torch.randn(b, h, n, dv, generator=g)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", list(_backends()))
def test_forward_and_backward_match_reference(shape, backend):
    backward = not (backend == "flex" and not torch.cuda.is_available())
    if not backward:
        # torch's FlexAttention has no CPU backward; its backward is checked on CUDA only.
        q, k, v = _inputs(shape)
        torch.testing.assert_close(_backends()[backend](q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=0)
        return
    q, k, v = _inputs(shape, requires_grad=True)
    grad = torch.randn(*shape[:3], shape[5], generator=torch.Generator().manual_seed(1))
    ref = reference_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    out = _backends()[backend](q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for g_out, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=0)


def test_reference_masks_below_row_mean_and_renormalises():
    # An independent oracle: one row by hand.
    q = torch.tensor([[[[1.0, 0.0]]]])                    # (1, 1, 1, 2)
    k = torch.tensor([[[[3.0, 0.0], [1.0, 0.0], [-2.0, 0.0], [2.0, 0.0]]]])
    v = torch.tensor([[[[10.0], [20.0], [30.0], [40.0]]]])
    s = torch.tensor([3.0, 1.0, -2.0, 2.0]) / 2 ** 0.5    # mean = 1/sqrt(2): keep 3, 1 (tie) and 2
    keep = torch.tensor([0, 1, 3])
    w = torch.softmax(s[keep], 0)
    expected = (w * torch.tensor([10.0, 20.0, 40.0])).sum()
    for backend in ("reference", "chunked", "sdpa", "flex"):
        out = graph_attention(q, k, v, backend=backend)
        assert out.item() == pytest.approx(expected.item(), abs=1e-5), backend


@pytest.mark.parametrize("backend", ["reference", "chunked", "sdpa", "flex"])
def test_exact_ties_are_kept(backend):
    # Integer features, d = 4 (scale 1/2) and n = 4 keys: every score and mean is exact,
    # so some scores equal their row mean exactly; >= keeps them in every backend.
    q = torch.tensor([[[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 1.0, 0, 0]]]])
    k = torch.tensor([[[[2.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 1.0, 0, 0], [1.0, 1.0, 0, 0]]]])
    v = torch.arange(4.0).reshape(1, 1, 4, 1)
    out = graph_attention(q, k, v, backend=backend)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=1e-6, rtol=0)
    # Row 2 scores all equal their mean (2/2 = 1): all four kept -> plain mean of v.
    assert out[0, 0, 2, 0].item() == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("backend", ["reference", "chunked", "sdpa", "flex"])
def test_flat_input_never_masks_whole_rows(backend):
    # All keys equal: S_ij == t_i up to rounding; without the tolerance rows turn NaN.
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 1000, 16, generator=g) * 7
    k = (torch.randn(1, 4, 1, 16, generator=g) * 3).expand(1, 4, 1000, 16).contiguous()
    v = torch.randn(1, 4, 1000, 16, generator=g)
    out = graph_attention(q, k, v, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_chunked_never_allocates_the_score_matrix():
    # m = n = 20000: the (m x n) fp32 matrix would be 1.6 GB. Measured in a fresh process
    # so that the peak RSS belongs to this computation alone.
    code = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from magncli.attention import chunked_attention
        q, k, v = (torch.randn(1, 1, 20000, 16) for _ in range(3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = chunked_attention(q, k, v, chunk_bytes=32 * 2**20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(out).all()
        print((after - before) * 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    growth = int(res.stdout.strip().splitlines()[-1])
    full_matrix = 20000 * 20000 * 4
    assert full_matrix > 2**30
    assert growth < 256 * 2**20, f"peak grew by {growth / 2**20:.0f} MiB"


@pytest.mark.slow
def test_compiled_chunks_match_the_reference():
    # The inference engine compiles the chunk function for large CPU jobs.
    from magncli.attention import compiled_chunks
    q, k, v = _inputs((1, 4, 300, 300, 16, 16), seed=5)
    with compiled_chunks(True):
        out = chunked_attention(q, k, v, chunk_bytes=64 * 300 * 4 * 3 * 4)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=1e-5, rtol=0)


def test_engine_compiles_only_for_many_cpu_tiles_with_the_chunked_backend(monkeypatch):
    import numpy as np

    import magncli.inference as inference
    from magncli.models import build_model
    seen = []
    real = inference.compiled_chunks
    monkeypatch.setattr(inference, "compiled_chunks", lambda enabled: seen.append(enabled) or real(False))
    model = build_model("magn", n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8)
    chunked = dict(device="cpu", backend="chunked")
    inference.restore_array(model, np.zeros((40, 40, 3), np.float32), inference.InferenceOptions(**chunked))
    inference.restore_array(model, np.zeros((40, 200, 3), np.float32), inference.InferenceOptions(**chunked, tile=16, overlap=4))
    inference.restore_array(model, np.zeros((40, 40, 3), np.float32), inference.InferenceOptions(**chunked, compile=True))
    # The CPU default backend (sdpa) is fused already: never a cold compile, however many tiles.
    inference.restore_array(model, np.zeros((40, 200, 3), np.float32), inference.InferenceOptions(device="cpu", tile=16, overlap=4))
    assert seen == [False, True, True, False]


def test_sdpa_in_bf16_keeps_the_fp32_mask_and_stays_close():
    # bf16 q, k, v (autocast on a CPU with native bf16): the kept set is decided in fp32
    # from the same bf16 values, and the output stays within bf16 rounding of the fp32
    # reference computed from those values.
    q, k, v = (t.bfloat16() for t in _inputs((2, 1, 200, 200, 48, 48), seed=7))
    out = sdpa_attention(q, k, v).float()
    ref = reference_attention(q.float(), k.float(), v.float())
    assert (out - ref).abs().max().item() < 0.05
    assert (out - ref).abs().mean().item() < 0.005


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_bytes", [1, None])
def test_sdpa_without_gradients_takes_the_folded_path_and_matches_the_reference(shape, chunk_bytes):
    # Inference folds scale and threshold into the product and masks each block's scores
    # with one threshold pass instead of calling SDPA.
    q, k, v = _inputs(shape, seed=11)
    kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    with torch.no_grad():
        out = sdpa_attention(q, k, v, **kwargs)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=1e-5, rtol=0)


def test_inference_path_keeps_large_logits_finite_and_exact():
    # The folded scores are S - t, not S: rows whose logits reach hundreds (a feature map
    # that grew, no QK-norm) must still softmax without overflow and keep the same set.
    q, k, v = _inputs((1, 2, 300, 300, 16, 16), seed=5)
    q = q * 40
    with torch.no_grad():
        out = sdpa_attention(q, k, v, chunk_bytes=4096)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=1e-4, rtol=0)
