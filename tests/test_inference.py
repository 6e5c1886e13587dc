"""The tiler, blending, ensemble, device and precision handling."""
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from magncli.degrade import bayer_masks, bayer_mosaic
from magncli.devices import resolve_device
from magncli.ensemble import self_ensemble
from magncli.errors import MagnError
from magncli.models.registry import ModelFacts
from magncli.inference import InferenceOptions, restore_array, restore_tensor
from magncli.tasks import get_task
from magncli.tiling import blend_weights, tile_spans


class SmallRF(nn.Module):
    """Three 3x3 convs: receptive-field radius 3, well inside overlap/4 = 4."""

    def __init__(self, channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.facts = ModelFacts(in_channels=channels)
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(8, channels, 3, padding=1))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return x + self.net(x)


@pytest.mark.parametrize("align", [1, 2, 4, 8])
@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 16), (64, 64, 16), (65, 64, 16), (7, 64, 16),
                                                 (1001, 48, 12), (33, 32, 0)])
def test_tile_spans_cover_aligned_and_snap_to_the_edge(length, tile, overlap, align):
    spans = tile_spans(length, tile, overlap, align)
    t = min(tile, length)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a % align == 0 for a, _ in spans)      # same Bayer phase / patch grid in every tile
    assert all(b - a == t for a, b in spans[:-1]) and t - align < spans[-1][1] - spans[-1][0] <= t
    covered = np.zeros(length, bool)
    for a, b in spans:
        covered[a:b] = True
    assert covered.all()
    assert all(b0 - a1 >= overlap for (_, b0), (a1, _) in zip(spans, spans[1:]))   # never less overlap


def test_blend_weights_positive_sum_and_zero_at_inner_edges():
    total = np.zeros((100, 90))
    for y0, y1 in tile_spans(100, 32, 16):
        for x0, x1 in tile_spans(90, 32, 16):
            w = blend_weights(y1 - y0, x1 - x0, 16, y0, x0, 100, 90)
            total[y0:y1, x0:x1] += w
            if y0 > 0:
                assert np.all(w[:4] == 0)    # the quarter of the overlap at an inner edge
    assert total.min() > 0.5


@pytest.mark.parametrize("h,w", [(100, 77), (64, 64), (130, 33)])
def test_tiled_equals_whole_image_for_small_receptive_field(h, w):
    model = SmallRF()
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        whole = model(x)
    tiled = restore_tensor(model, x, InferenceOptions(device="cpu", tile=32, overlap=16))
    # Stated tolerance: fp32 rounding of the weighted blend only.
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    assert max(s[-1] for s in model.seen[1:]) <= 32 and max(s[-2] for s in model.seen[1:]) <= 32


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (1001, 7)])
@pytest.mark.parametrize("channels", [1, 3])
def test_odd_sizes_gray_and_rgb(h, w, channels):
    model = SmallRF(channels)
    img = np.random.default_rng(0).random((h, w, channels), dtype=np.float32)
    out = restore_array(model, img, InferenceOptions(device="cpu", tile=32, overlap=16))
    assert out.shape == img.shape and out.dtype == np.float32
    with torch.no_grad():
        whole = model(torch.from_numpy(img.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(out, whole, atol=1e-5)


def test_two_dimensional_input_stays_two_dimensional():
    out = restore_array(SmallRF(1), np.zeros((9, 10), np.float32), InferenceOptions(device="cpu"))
    assert out.shape == (9, 10)


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(MagnError, match="3-channel"):
        restore_array(SmallRF(3), np.zeros((9, 10, 1), np.float32))


def test_self_ensemble_matches_naive_dihedral_mean():
    # A non-equivariant function (adds a horizontal ramp) against a numpy oracle.
    ramp = torch.arange(6.0).reshape(1, 1, 1, 6) / 10

    def fn(t):
        return t + torch.arange(t.shape[-1], dtype=t.dtype).reshape(1, 1, 1, -1) / 10

    x = torch.rand(1, 1, 6, 6)
    a = x[0, 0].numpy()
    outs = []
    for flip in (False, True):
        for k in range(4):
            t = np.rot90(a[:, ::-1] if flip else a, k)
            y = t + np.arange(6) / 10
            y = np.rot90(y, -k)
            outs.append(y[:, ::-1] if flip else y)
    expected = np.mean(outs, axis=0)
    np.testing.assert_allclose(self_ensemble(fn, x)[0, 0].numpy(), expected, atol=1e-6)
    # An equivariant function is unchanged by the ensemble.
    torch.testing.assert_close(self_ensemble(lambda t: t * 2, x), x * 2)
    assert ramp.shape[-1] == 6


def _grbg_bilinear(t):
    """Bilinear demosaicing that reads a GRBG mosaic only: the samples at GRBG's colour
    sites, interpolated with the usual symmetric kernels (so the function commutes with
    flips and rotations that keep the pattern). Any other pattern loses its samples."""
    mask = torch.from_numpy(bayer_masks(*t.shape[-2:], "grbg").transpose(2, 0, 1).astype(np.float32))  # (3, H, W)
    rb = torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]) / 4
    g = torch.tensor([[0., 1, 0], [1, 4, 1], [0, 1, 0]]) / 4
    kernels = torch.stack([rb, g, rb])[:, None]                                # (3, 1, 3, 3)
    return torch.nn.functional.conv2d(t * mask, kernels, padding=1, groups=3)


@pytest.mark.parametrize("h, w", [(16, 16), (15, 18), (17, 13)])
def test_ensemble_of_a_one_pattern_demosaicer_keeps_the_pattern(h, w):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, h, w), dtype=np.float32))[None]
    mosaic = torch.from_numpy(bayer_mosaic(image[0].numpy().transpose(1, 2, 0), "grbg")
                              .transpose(2, 0, 1).copy())[None]                # (1, 3, H, W)
    direct = _grbg_bilinear(mosaic)
    ensembled = self_ensemble(_grbg_bilinear, mosaic, get_task("demosaic").ensemble_input)
    # Equal away from the borders, where padding differs by transform.
    torch.testing.assert_close(ensembled[..., 2:-2, 2:-2], direct[..., 2:-2, 2:-2])
    # Without the task's hook, the flipped and rotated mosaics lose their samples.
    naive = self_ensemble(_grbg_bilinear, mosaic)
    assert (naive - direct)[..., 2:-2, 2:-2].abs().mean() > 0.05


def test_ensemble_option_runs_eight_passes_per_tile():
    model = SmallRF()
    restore_array(model, np.zeros((20, 20, 3), np.float32), InferenceOptions(device="cpu", ensemble=True))
    assert len(model.seen) == 8


def test_out_of_memory_halves_the_tile():
    class OOMAbove(SmallRF):
        def forward(self, x):
            if x.shape[-1] > 20:
                raise torch.cuda.OutOfMemoryError("simulated")
            return super().forward(x)

    model = OOMAbove()
    x = torch.rand(1, 3, 50, 50)
    out = restore_tensor(model, x, InferenceOptions(device="cpu", tile=64, overlap=8))
    assert out.shape == x.shape
    assert max(s[-1] for s in model.seen) == 16


def test_half_precision_needs_cuda_or_native_cpu_bf16_and_bad_options_are_errors(monkeypatch):
    import magncli.devices as devices
    with pytest.raises(MagnError, match="CUDA"):
        restore_tensor(SmallRF(), torch.rand(1, 3, 8, 8), InferenceOptions(device="cpu", precision="fp16"))
    # bf16 on the CPU: accepted where the CPU has it natively, refused (one line, why) elsewhere.
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(MagnError, match="native bf16"):
        restore_tensor(SmallRF(), torch.rand(1, 3, 8, 8), InferenceOptions(device="cpu", precision="bf16"))
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    x = torch.rand(1, 3, 8, 8)
    y = restore_tensor(SmallRF(), x, InferenceOptions(device="cpu", precision="bf16"))
    torch.testing.assert_close(y, restore_tensor(SmallRF(), x, InferenceOptions(device="cpu")), atol=0.02, rtol=0)
    with pytest.raises(MagnError, match="multiple of 4"):
        restore_tensor(SmallRF(), torch.rand(1, 3, 8, 8), InferenceOptions(device="cpu", tile=30))
    with pytest.raises(MagnError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MagnError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def _seam_and_typical_steps(overlap):
    """Mean column-to-column change of (output - input) at tile borders and in general."""
    from magn_testkit import TINY, random_magn
    model = random_magn(**TINY)
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (96, 1))[..., None].repeat(3, 2)
    img = ramp + 0.05 * rng.standard_normal((96, 96, 3)).astype(np.float32)
    out = restore_array(model, img, InferenceOptions(device="cpu", tile=32, overlap=overlap, compile=False))
    steps = np.abs(np.diff(out - img, axis=1)).mean(axis=(0, 2))      # steps[i]: column i -> i+1
    spans = tile_spans(96, 32, overlap)
    borders = sorted({a - 1 for a, _ in spans if a > 0} | {b - 1 for _, b in spans if b < 96})
    return steps[borders].max(), np.median(steps[4:-4])   # the image's own border excluded


def test_magn_tiles_blend_without_seams():
    # A graph model's tiles differ, so tile borders are where seams would show.
    seam, typical = _seam_and_typical_steps(overlap=16)
    assert seam < 1.5 * typical
    # Control: the same measure does see the hard seams of non-overlapping tiles.
    seam, typical = _seam_and_typical_steps(overlap=0)
    assert seam > 3 * typical


def test_tile_batches_give_the_same_result():
    model = SmallRF()
    x = torch.rand(1, 3, 70, 61)     # edge tiles are shorter: batches must group by shape
    one = restore_tensor(model, x, InferenceOptions(device="cpu", tile=32, overlap=16, tile_batch=1))
    many = restore_tensor(model, x, InferenceOptions(device="cpu", tile=32, overlap=16, tile_batch=5))
    torch.testing.assert_close(many, one, atol=1e-6, rtol=0)
    assert max(s[0] for s in model.seen) > 1


# --------------------------------------------------------------------------- issue 18
@pytest.mark.parametrize("ensemble, tile_batch", [(False, 1), (False, 4), (True, 1), (True, 3)])
def test_progress_counts_tile_passes_up_to_the_total(ensemble, tile_batch):
    model = SmallRF()
    x = torch.rand(1, 3, 100, 77)
    opts = InferenceOptions(device="cpu", tile=32, overlap=16, ensemble=ensemble, tile_batch=tile_batch)
    calls = []
    out = restore_tensor(model, x, opts, progress=lambda done, total: calls.append((done, total)))
    tiles = len(tile_spans(100, 32, 16)) * len(tile_spans(77, 32, 16))
    total = tiles * (8 if ensemble else 1)        # one pass per tile, eight with the ensemble
    assert tiles > 4 and {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == total and all(a < b for a, b in zip(done, done[1:]))
    assert len(calls) == 1 + len(model.seen)        # after every forward pass, and once before
    torch.testing.assert_close(out, restore_tensor(model, x, opts), atol=0, rtol=0)


def test_progress_reaches_restore_array_callers_and_a_single_tile():
    calls = []
    restore_array(SmallRF(), np.random.rand(20, 24, 3).astype(np.float32), InferenceOptions(device="cpu"),
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 1), (1, 1)]


def test_a_prepared_model_is_not_moved_again(monkeypatch):
    # Threads restoring images with one model at once (restore --jobs) must never see
    # its weights replaced while they run it: once in place, .to() is not called again.
    model = SmallRF()
    restore_array(model, np.random.rand(20, 24, 3).astype(np.float32), InferenceOptions(device="cpu"))
    weight = model.net[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(SmallRF, "to", lambda self, *a, **k: pytest.fail("moved again"))
    restore_array(model, np.random.rand(20, 24, 3).astype(np.float32), InferenceOptions(device="cpu"))
    assert model.net[0].weight is weight


# --------------------------------------------------------------------------- tiles side by side
class ThreadRecorder(SmallRF):
    """SmallRF that notes the thread and the torch threads each forward pass ran on;
    `together`: a barrier the first passes must meet at (they ran at the same time)."""

    def __init__(self, fail_on_call=None, together=None):
        super().__init__()
        self.threads, self.torch_threads, self.fail_on_call = [], [], fail_on_call
        self.together = together

    def forward(self, x):
        self.threads.append(threading.get_ident())
        self.torch_threads.append(torch.get_num_threads())
        if self.together is not None and len(self.threads) <= self.together.parties:
            self.together.wait()
        if self.fail_on_call is not None and len(self.threads) == self.fail_on_call:
            raise RuntimeError("batch failed")
        time.sleep(0.02)
        return super().forward(x)


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _one_by_one(monkeypatch):
    """The engine as before tile workers: every batch on the caller's thread, at its threads."""
    import magncli.inference as inference
    monkeypatch.setattr(inference, "tile_workers", lambda plan, n_tiles: 1)


def _tile_threads_alive() -> int:
    return sum(t.name.startswith("magn-tiles") for t in threading.enumerate())


def test_tiles_run_side_by_side_at_one_thread_each_with_the_same_result(two_torch_threads, monkeypatch):
    x = torch.rand(1, 3, 100, 77)
    opts = InferenceOptions(device="cpu", tile=32, overlap=16, tile_batch=4)
    side_by_side = ThreadRecorder(together=threading.Barrier(2, timeout=30))
    out = restore_tensor(side_by_side, x, opts)
    assert len(set(side_by_side.threads)) == 2 and set(side_by_side.torch_threads) == {1}
    assert threading.get_ident() not in side_by_side.threads
    assert torch.get_num_threads() == 2 and _tile_threads_alive() == 0   # the caller's threads given back
    _one_by_one(monkeypatch)
    one_by_one = ThreadRecorder()
    expected = restore_tensor(one_by_one, x, opts)
    assert set(one_by_one.threads) == {threading.get_ident()} and set(one_by_one.torch_threads) == {2}
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_a_small_image_is_split_so_both_threads_get_tiles(two_torch_threads):
    model = ThreadRecorder(together=threading.Barrier(2, timeout=30))
    restore_tensor(model, torch.rand(1, 3, 48, 48), InferenceOptions(device="cpu", tile=32, overlap=16))
    assert model.seen == [(2, 3, 32, 32)] * 2 and len(set(model.threads)) == 2    # 4 tiles: 2 + 2, at once


def test_a_failing_batch_fails_the_image_and_stops_the_rest(two_torch_threads):
    model = ThreadRecorder(fail_on_call=2)
    with pytest.raises(RuntimeError, match="batch failed"):
        restore_tensor(model, torch.rand(1, 3, 200, 200), InferenceOptions(device="cpu", tile=32, overlap=16,
                                                                           tile_batch=1))
    calls = len(model.threads)
    assert _tile_threads_alive() == 0 and torch.get_num_threads() == 2
    time.sleep(0.2)
    assert len(model.threads) == calls                     # nothing runs on after the failure


def test_a_real_magn_model_gives_the_same_bits_side_by_side(two_torch_threads, monkeypatch):
    # 48 x 48 at tile 32: 4 tiles, two batches of 2 side by side against one of 4 before.
    from magncli.models import build_model
    torch.manual_seed(0)
    model = build_model("magn-tiny-local", in_channels=1)
    x = np.random.RandomState(0).rand(48, 48, 1).astype(np.float32)
    opts = InferenceOptions(device="cpu", tile=32, overlap=8)
    side_by_side = restore_array(model, x, opts)
    _one_by_one(monkeypatch)
    np.testing.assert_array_equal(side_by_side, restore_array(model, x, opts))


def test_tile_workers_run_under_the_callers_compile_setting(two_torch_threads, monkeypatch):
    # compiled_chunks is per thread: the workers must see what the engine set.
    import magncli.attention as attention
    seen = []
    monkeypatch.setattr(ThreadRecorder, "forward",
                        lambda self, x: seen.append(attention._compile_state.enabled) or SmallRF.forward(self, x))
    for enabled in (True, False):
        restore_tensor(ThreadRecorder(), torch.rand(1, 3, 100, 77),
                       InferenceOptions(device="cpu", tile=32, overlap=16, compile=enabled))
        assert seen and set(seen) == {enabled}
        seen.clear()
