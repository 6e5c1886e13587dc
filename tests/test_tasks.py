"""The tasks (magncli.tasks): their registry and degradations, and restore_for_task, the one
way restore, eval and validation run a model: the level read from a JPEG file, every
Bayer pattern through one GRBG model, and outputs equal to the direct engine call."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn

from magncli.degrade import (BAYER_PATTERNS, add_gaussian_noise, align_mosaic, bayer_masks, bayer_mosaic,
                             mosaic_to_cfa)
from magncli.errors import MagnError
from magncli.eval_methods import model_method
from magncli.images import Image, read_image, write_image
from magncli.inference import InferenceOptions, restore_array
from magncli.metrics import psnr
from magncli.models.registry import ModelFacts
from magncli.restore import Restorer
from magncli.tasks import TASKS, degrade, get_task, make_degradation, restore_for_task
from magn_testkit import TINY, random_magn


# --------------------------------------------------------------------------- the registry
def test_every_task_is_registered_once_with_its_level_and_defaults():
    assert list(TASKS) == ["denoise", "dejpeg", "demosaic"]
    for task in TASKS.values():
        assert (task.level_key is None) == (not task.default_levels)
        for degradation in task.degradations():          # its default levels, or its pattern
            assert degradation.as_dict()["task"] == task.name and degradation.label
    assert [d.label for d in get_task("denoise").degradations()] == ["σ15", "σ25", "σ50"]
    with pytest.raises(MagnError, match="known: denoise, dejpeg, demosaic"):
        get_task("deblur")


def test_levels_are_checked_and_recorded_as_the_task_says():
    assert get_task("denoise").check_level(25.0) == 25 and get_task("denoise").check_level(12.5) == 12.5
    assert make_degradation("dejpeg", 10.0).level == 10
    for bad in (lambda: get_task("dejpeg").check_level(10.5), lambda: make_degradation("denoise", -1),
                lambda: make_degradation("dejpeg"), lambda: make_degradation("demosaic", 5)):
        with pytest.raises(MagnError):
            bad()
    with pytest.raises(MagnError, match=r"\(sigma=\)"):
        make_degradation("denoise")        # the CLI says (--sigma)


def test_degrade_is_one_call_of_the_protocol():
    img = np.random.default_rng(0).random((8, 9, 3), dtype=np.float32)
    assert np.array_equal(degrade(img, "denoise", 25, seed=7), add_gaussian_noise(img, 25, 7))


def test_degradation_records_only_its_parameters():
    assert make_degradation("denoise", 25, seed=3).as_dict() == {"task": "denoise", "sigma": 25,
                                                                 "seed": 3}
    assert make_degradation("dejpeg", 10).as_dict() == {"task": "dejpeg", "quality": 10, "subsampling": "4:2:0"}
    assert make_degradation("demosaic", pattern="RGGB").as_dict() == {"task": "demosaic",
                                                                      "pattern": "rggb"}


# --------------------------------------------------------------------------- restore_for_task
@pytest.mark.parametrize("task,level,pattern", [("denoise", 25, None), ("dejpeg", 20, None),
                                                ("demosaic", None, "grbg"), ("demosaic", None, "rggb"),
                                                ("demosaic", None, "gbrg")])
def test_the_task_path_equals_the_direct_engine_call_exactly(task, level, pattern):
    """restore, eval and validation go through restore_for_task; on a fixed-seed model its
    output is bit for bit the engine's on the task's view of the input."""
    channels = 1 if task == "denoise" else 3
    model = random_magn(in_channels=channels, **TINY).eval()
    options = InferenceOptions(device="cpu", tile=32, overlap=8)
    clean = np.random.default_rng(3).random((41, 50, channels), dtype=np.float32)
    degradation = make_degradation(task, level, pattern=pattern or "grbg")
    degraded = degradation.apply(clean)
    got = restore_for_task(model, degraded, task, pattern=pattern, options=options)

    view, (dy, dx) = align_mosaic(degraded, pattern) if pattern else (degraded, (0, 0))
    assert np.array_equal(got, restore_array(model, view, options)[dy:, dx:])
    assert np.array_equal(model_method(model, options).restore(degraded, degradation), got)
    restorer = Restorer(task=task, model=model, pattern=pattern or "grbg", options=options)
    assert np.array_equal(restorer.restore(Image(degraded))[0].pixels, got)
    if pattern:      # the same mosaic stored as a one-channel CFA
        assert np.array_equal(restorer.restore(Image(mosaic_to_cfa(degraded)[..., None]))[0].pixels, got)


class Identity(nn.Module):
    facts = ModelFacts(in_channels=3)

    def forward(self, x):
        return x


def test_dejpeg_restore_reports_the_quality_it_assumed(tmp_path):
    px = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(px).save(tmp_path / "a.jpg", quality=37)
    write_image(tmp_path / "b.png", Image(px))
    restorer = Restorer(task="dejpeg", model=Identity())
    _, info = restorer.restore(read_image(tmp_path / "a.jpg"))
    assert info["quality"] == 37 and info["quality_source"] == "JPEG tables"
    _, info = restorer.restore(read_image(tmp_path / "b.png"))
    assert "quality" not in info and info["quality_source"] == "unknown"
    _, info = Restorer(task="dejpeg", model=Identity(), level=50).restore(read_image(tmp_path / "b.png"))
    assert (info["quality"], info["quality_source"]) == (50, "given")     # stated by the user


class LevelRecorder(nn.Module):
    """A level-conditioned 3-channel model that records the level map of every input and
    returns the image: the map must be one constant plane after the image's channels."""
    facts = ModelFacts(in_channels=3, level_input=True)

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):                                              # (B, 3 + 1, H, W)
        assert x.shape[1] == 4
        plane = x[:, 3]
        assert torch.equal(plane, plane.flatten()[0].expand_as(plane))
        self.seen.append(float(plane.flatten()[0]))
        return x[:, :3] * 0.5


class ChannelWeights(nn.Module):
    """A level-conditioned color model whose channels come out scaled 1x, 2x, 3x: a gray
    image given to it replicated comes back as the mean, 2x the image."""
    facts = ModelFacts(in_channels=3, level_input=True)

    def forward(self, x):                                              # (B, 3 + 1, H, W)
        assert x.shape[1] == 4 and torch.equal(x[:, 0], x[:, 2])       # the gray replicated
        return x[:, :3] * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)


def test_eval_and_restore_run_a_gray_image_through_a_color_model_alike(tmp_path):
    """Only a color model (say the color JPEG model for a gray set): restore, eval and
    validation all replicate the gray and keep the mean of the output channels (eval
    used to hand the model the gray image and its level map, 2 planes, and fail)."""
    gray = np.random.default_rng(2).random((24, 40, 1)).astype(np.float32)
    out = model_method(ChannelWeights()).restore(gray, make_degradation("dejpeg", 20))
    np.testing.assert_allclose(out, 2 * gray, rtol=1e-6)
    restored, info = Restorer(task="dejpeg", model=ChannelWeights()).restore(Image(gray))
    np.testing.assert_array_equal(restored.pixels, out)
    assert info["note"] == "gray image restored with a color model"


def test_a_level_conditioned_model_sees_the_quality_the_file_states(tmp_path):
    """The map is libjpeg's table scale / 500 (5000/q below 50, 200 - 2q above), -1 when no
    quality is known; restore, eval and the tiled x8 path all pass it, and the model's
    image channels come back."""
    px = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(px).save(tmp_path / "a.jpg", quality=37)
    write_image(tmp_path / "b.png", Image(px))
    model = LevelRecorder()
    restored, info = Restorer(task="dejpeg", model=model).restore(read_image(tmp_path / "a.jpg"))
    assert info["quality"] == 37 and model.seen == [pytest.approx((5000 // 37) / 500)]
    assert restored.pixels.shape == (40, 56, 3)
    model.seen.clear()
    Restorer(task="dejpeg", model=model).restore(read_image(tmp_path / "b.png"))      # states nothing
    Restorer(task="dejpeg", model=model, level=90).restore(read_image(tmp_path / "b.png"))
    assert model.seen == [-1.0, pytest.approx(20 / 500)]
    model.seen.clear()
    clean = px.astype(np.float32) / 255
    out = model_method(model, InferenceOptions(tile=32, overlap=8, ensemble=True)).restore(
        clean, make_degradation("dejpeg", 10))
    np.testing.assert_allclose(out, clean * 0.5, atol=1e-6)
    assert len(model.seen) >= 8 and set(model.seen) == {1.0}                      # batches of tiles x 8
    with pytest.raises(MagnError, match="level map"):
        restore_for_task(model, clean, "demosaic")


def test_a_level_conditioned_denoiser_hears_the_sigma_given_or_unknown():
    """A denoiser's map is sigma / 50 when sigma is known (restore's --sigma, eval's
    protocol level) and -1 when not (restore without --sigma, eval's blind rows); the
    record says which."""
    noisy = np.random.default_rng(1).random((24, 32, 3)).astype(np.float32)
    model = LevelRecorder()
    _, given = Restorer(task="denoise", model=model, level=25).restore(Image(noisy))
    _, blind = Restorer(task="denoise", model=model).restore(Image(noisy))
    assert model.seen == [pytest.approx(0.5), -1.0]
    assert (given["sigma"], given["sigma_source"]) == (25, "given")
    assert "sigma" not in blind and blind["sigma_source"] == "unknown"
    model.seen.clear()
    degradation = make_degradation("denoise", 50)
    model_method(model).restore(noisy, degradation)
    model_method(model, level_known=False).restore(noisy, degradation)
    assert model.seen == [pytest.approx(1.0), -1.0]


class BilinearGRBG(nn.Module):
    """A demosaicer that only understands GRBG: normalised convolution with GRBG masks."""
    facts = ModelFacts(in_channels=3)

    def forward(self, x):                                              # (B, 3, H, W) mosaic
        h, w = x.shape[-2:]
        masks = torch.from_numpy(bayer_masks(h, w, "grbg").transpose(2, 0, 1)).float()[None]
        k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).reshape(1, 1, 3, 3).repeat(3, 1, 1, 1)
        num = F.conv2d(x * masks, k, padding=1, groups=3)
        den = F.conv2d(masks.expand_as(x), k, padding=1, groups=3)
        return num / den


def _smooth_rgb(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w] / 16.0
    return np.stack([0.5 + 0.4 * np.sin(xx), 0.5 + 0.4 * np.cos(yy), 0.5 + 0.3 * np.sin(xx + yy)], -1)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("one_channel", [False, True])
def test_every_pattern_through_one_grbg_model(tmp_path, pattern, one_channel):
    rgb = _smooth_rgb()
    mosaic = bayer_mosaic(rgb, pattern)
    stored = mosaic_to_cfa(mosaic) if one_channel else mosaic
    stored = np.rint(stored * 65535).astype(np.uint16).reshape(*rgb.shape[:2], -1)
    write_image(tmp_path / "m.png", Image(stored))
    restorer = Restorer(task="demosaic", model=BilinearGRBG(), pattern=pattern)
    out, info = restorer.restore(read_image(tmp_path / "m.png"))
    assert out.pixels.shape == rgb.shape and info["pattern"] == pattern
    good = psnr(out.to_float(), rgb)
    assert good > 30
    # Control: the same mosaic declared as the wrong pattern is far worse.
    if pattern != "grbg":
        wrong, _ = Restorer(task="demosaic", model=BilinearGRBG(), pattern="grbg").restore(
            read_image(tmp_path / "m.png"))
        assert psnr(wrong.to_float(), rgb) < good - 5


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("one_channel", [False, True])
def test_the_pattern_is_read_off_the_mosaic_when_not_given(tmp_path, pattern, one_channel):
    """Restorer's default pattern is "auto": each mosaic's own, recorded as detected,
    and restored as well as when the pattern is given."""
    rgb = _smooth_rgb() * np.array([1.0, 0.8, 0.5])                    # warmer than blue, as photos are
    mosaic = bayer_mosaic(rgb, pattern)
    stored = (mosaic_to_cfa(mosaic) if one_channel else mosaic).reshape(*rgb.shape[:2], -1)
    write_image(tmp_path / "m.png", Image(np.rint(stored * 65535).astype(np.uint16)))
    out, info = Restorer(task="demosaic", model=BilinearGRBG()).restore(read_image(tmp_path / "m.png"))
    assert (info["pattern"], info["pattern_source"]) == (pattern, "detected")
    given, given_info = Restorer(task="demosaic", model=BilinearGRBG(), pattern=pattern).restore(
        read_image(tmp_path / "m.png"))
    assert (given_info["pattern"], given_info["pattern_source"]) == (pattern, "given")
    assert np.array_equal(out.pixels, given.pixels) and psnr(out.to_float(), rgb) > 30
    # The library's own default is the same.
    x = read_image(tmp_path / "m.png").to_float()
    np.testing.assert_array_equal(restore_for_task(BilinearGRBG(), x, "demosaic"),
                                  restore_for_task(BilinearGRBG(), x, "demosaic", pattern=pattern))


def test_a_mosaic_whose_pattern_cannot_be_told_is_refused_before_the_model_runs():
    flat = np.full((24, 32, 1), 0.5, np.float32)                  # a CFA whose sites are all alike
    with pytest.raises(MagnError, match="cannot tell the Bayer pattern.*pass pattern="):
        Restorer(task="demosaic", model=BilinearGRBG()).restore(Image(flat))
    noise = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)      # no zeros: not a mosaic
    with pytest.raises(MagnError, match="full-color image, not a Bayer mosaic"):
        Restorer(task="demosaic", model=BilinearGRBG()).restore(Image(noise))


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_eval_aligns_every_pattern_for_grbg_models(pattern):
    # `magn eval --pattern P` runs models through the same alignment as restore.
    from magncli.tasks import make_degradation
    from magncli.eval_methods import model_method
    from magncli.inference import InferenceOptions
    rgb = _smooth_rgb().astype(np.float32)
    degradation = make_degradation("demosaic", pattern=pattern)
    out = model_method(BilinearGRBG(), InferenceOptions(device="cpu")).restore(
        degradation.apply(rgb), degradation)
    assert out.shape == rgb.shape and psnr(out, rgb) > 30


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_a_half_resolution_trunk_sees_packed_bayer_quads(pattern):
    """docs/architecture.md: with unshuffle 2, every trunk position of a mosaic in the
    models' GRBG phase holds one Bayer quad, its G, R, B, G samples in channels 4, 1, 10,
    7 of 12 (channel c, offset (i, j) -> 4c + 2i + j), and nothing else."""
    rgb = np.random.default_rng(1).random((10, 14, 3)).astype(np.float32) + 0.1
    x, _ = get_task("demosaic").prepare_input(bayer_mosaic(rgb, pattern), pattern)
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    packed = F.pixel_unshuffle(torch.from_numpy(x[:h, :w].transpose(2, 0, 1))[None], 2)[0]
    nonzero = {int(c) for c in torch.nonzero(packed.abs().sum((1, 2)))}
    assert nonzero == {1, 4, 7, 10}
    assert bool((packed[[1, 4, 7, 10]][:, 1:-1, 1:-1] > 0).all())     # every inner quad complete


# --------------------------------------------------------------------------- the ensemble's flips
@pytest.mark.parametrize("h, w", [(6, 8), (7, 8), (6, 9), (7, 9)])
@pytest.mark.parametrize("k", range(8))
def test_every_flip_of_a_mosaic_is_padded_back_into_the_models_pattern(h, w, k):
    """The demosaic task's ensemble hook: the k-th flip or rotation of a GRBG mosaic,
    padded by the rows and columns it names, is a GRBG mosaic again (each pixel on a
    site of its own colour), and the crop it names gives the flip back."""
    from magncli.ensemble import dihedral
    sites = torch.from_numpy(bayer_masks(h, w, "grbg").transpose(2, 0, 1).astype(np.float32))[None]  # (1, 3, H, W)
    flipped = dihedral(sites, k)
    padded, (dy, dx) = get_task("demosaic").ensemble_input(flipped, k, (h, w))
    grbg = torch.from_numpy(bayer_masks(*padded.shape[-2:], "grbg").transpose(2, 0, 1).astype(np.float32))
    assert torch.equal(padded[0], grbg)
    assert torch.equal(padded[..., dy:, dx:], flipped) and dy in (0, 1) and dx in (0, 1)
    # Tasks whose inputs a flip does not change take each flip as it is.
    assert get_task("denoise").ensemble_input(flipped, k, (h, w)) == (flipped, (0, 0))


class CountsFacts(nn.Module):
    """A color model that counts how often it is asked for its facts."""

    def __init__(self):
        super().__init__()
        self.asked = 0

    @property
    def facts(self) -> ModelFacts:
        self.asked += 1
        return ModelFacts(in_channels=3, size_multiple=4)

    def forward(self, x):
        return x


@pytest.mark.parametrize("options", [InferenceOptions(device="cpu", tile=16, overlap=4, ensemble=True),
                                     InferenceOptions(device="cpu", tiling="chop", ensemble=True)],
                         ids=["tiles", "chop"])
def test_restoring_an_image_asks_for_the_models_facts_once(options):
    # The tile plan settles what the facts decide (tile, overlap, alignment, level map,
    # attention backend, chop settings) once; every tile and flip reads the plan.
    model = CountsFacts()
    mosaic = bayer_mosaic(_smooth_rgb().astype(np.float32)[:37, :41], "rggb")
    out = restore_for_task(model, mosaic, "demosaic", pattern="rggb", options=options)
    assert out.shape == mosaic.shape and model.asked == 1


def test_the_jpeg_guard_follows_its_table_and_never_guards_a_file_that_states_nothing():
    from magncli.tasks import JPEG_GUARD
    guard = get_task("dejpeg").unimprovable
    for subsampling, lowest in JPEG_GUARD.items():
        if lowest is None:                                   # measured: every quality gains
            assert all(guard(q, {"subsampling": subsampling}) is None for q in (50, 95, 100))
            continue
        assert guard(lowest, {"subsampling": subsampling}) == \
            f"q{lowest} {subsampling}: the model does not improve such files"
        assert guard(lowest - 1, {"subsampling": subsampling}) is None
    strictest = min(q for name, q in JPEG_GUARD.items() if name != "none" and q is not None)
    for unmeasured in ("4:1:1", "2x2,1x1,2x1"):
        assert guard(strictest, {"subsampling": unmeasured})
        assert guard(strictest - 1, {"subsampling": unmeasured}) is None
    assert guard(100, {}) is None and guard(50, {"subsampling": "4:4:4"}) is None
