"""A published checkpoint's measured CPU defaults (weights manifest, cpu_defaults): restore
runs it in bf16 and at its tile where the user said nothing and the CPU has bf16 natively;
what the user says wins; another file, or eval's protocol, runs as before."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from magncli.checkpoints import save_checkpoint
from magncli.errors import MagnError
from magncli.images import Image
from magncli.inference import InferenceOptions
from magncli.models import build_model
from magncli.restore import Restorer
from magncli.weights import add_checkpoint, load_manifest

TINY = dict(n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8)


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A tiny gray denoiser published in a manifest of its own, measured bf16 at tile 96."""
    folder = tmp_path / "weights"
    folder.mkdir()
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"schema": 1, "base_url": None, "checkpoints": []}))
    model = build_model("magn-s-local", in_channels=1, **TINY)
    file = save_checkpoint(tmp_path / "tiny.safetensors", model, {"task": "denoise", "channels": 1},
                           half=True)
    add_checkpoint(file, name="tiny-gray", task="denoise", levels="0-75", default=True, manifest_path=manifest)
    raw = json.loads(manifest.read_text())
    raw["checkpoints"][0]["cpu_defaults"] = {"precision": "bf16", "tile": 96, "measured": "a benchmark"}
    manifest.write_text(json.dumps(raw))
    monkeypatch.setenv("MAGN_MANIFEST", str(manifest))
    return folder / load_manifest(manifest).get("tiny-gray").file


def _native_bf16(monkeypatch, native: bool) -> None:
    import magncli.devices
    monkeypatch.setattr(magncli.devices, "cpu_has_native_bf16", lambda: native)


def test_restore_runs_a_published_file_as_measured_where_the_cpu_has_bf16(published, monkeypatch):
    _native_bf16(monkeypatch, True)
    _, _, options = Restorer("denoise", weights="tiny-gray", options=InferenceOptions(device="cpu")).model_for(1)
    assert (options.precision, options.tile) == ("bf16", 96)
    # The task's default checkpoint, picked with no weights given: the same.
    _, _, options = Restorer("denoise", options=InferenceOptions(device="cpu")).model_for(1)
    assert (options.precision, options.tile) == ("bf16", 96)
    # What the user says wins, each setting alone.
    _, _, options = Restorer("denoise", weights="tiny-gray",
                             options=InferenceOptions(device="cpu", precision="fp32")).model_for(1)
    assert (options.precision, options.tile) == ("fp32", 96)
    _, _, options = Restorer("denoise", weights="tiny-gray",
                             options=InferenceOptions(device="cpu", tile=64)).model_for(1)
    assert (options.precision, options.tile) == ("bf16", 64)
    # The record says what ran.
    image = Image(np.full((32, 32, 1), 0.5, np.float32))
    _, record = Restorer("denoise", weights="tiny-gray", options=InferenceOptions(device="cpu")).restore(image)
    assert record["precision"] == "bf16"


def test_without_native_bf16_or_for_another_file_the_engine_defaults_hold(published, monkeypatch, tmp_path):
    _native_bf16(monkeypatch, False)
    _, _, options = Restorer("denoise", weights="tiny-gray", options=InferenceOptions(device="cpu")).model_for(1)
    assert (options.precision, options.tile) == (None, 96)          # None: fp32
    _native_bf16(monkeypatch, True)
    copy = tmp_path / "mine.safetensors"                            # the same bytes, not the published file
    shutil.copyfile(published, copy)
    _, _, options = Restorer("denoise", weights=str(copy), options=InferenceOptions(device="cpu")).model_for(1)
    assert (options.precision, options.tile) == (None, None)
    image = Image(np.full((32, 32, 1), 0.5, np.float32))
    _, record = Restorer("denoise", weights=str(copy), options=InferenceOptions(device="cpu")).restore(image)
    assert record["precision"] == "fp32"


def test_cpu_defaults_are_checked_when_the_manifest_is_read(published):
    manifest = published.parent / "manifest.json"
    raw = json.loads(manifest.read_text())
    for bad, words in (({"precision": "fp16"}, "fp32 or bf16"), ({"tile": 50}, "multiple of 4"),
                       ({"tiles": 64}, "unknown key 'tiles'")):
        raw["checkpoints"][0]["cpu_defaults"] = bad
        manifest.write_text(json.dumps(raw))
        with pytest.raises(MagnError, match=words):
            load_manifest(manifest)
