"""Pretrained weights: manifest validation, default selection, resolution, downloads
(against a real HTTP server on 127.0.0.1), offline mode and concurrent processes."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from magncli import weights
from magncli.weights import cache, download
from magncli.checkpoints import model_from_checkpoint
from magncli.errors import MagnError
from magncli.weights import load_manifest, resolve_weights, select_default

from weights_testkit import (REPO_ROOT, make_entry, server, sha256_of, tiny_bytes,  # noqa: F401
                             tiny_checkpoint, wenv)

NAME = "tiny-s25"
FILE = f"{NAME}.safetensors"


def serve_tiny(server, wenv, data: bytes, **entry_kw) -> str:
    """Serve `data` at /ckpt/<FILE> and list it in the manifest; returns the URL."""
    server.state.files[f"/ckpt/{FILE}"] = data
    url = server.url(f"/ckpt/{FILE}")
    wenv.write_manifest([make_entry(NAME, data, [url], **entry_kw)])
    return url


def leftovers(wenv) -> list:
    """Files a failed download must not leave: the final name and the .part."""
    return [p for p in (wenv.cache / FILE, wenv.cache / f"{FILE}.part") if p.exists()]


# --------------------------------------------------------------------------- downloads

def test_fresh_download_loads_same_model_as_local_file(server, wenv, tiny_checkpoint, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    path = resolve_weights(NAME, quiet=True)
    assert path == wenv.cache / FILE
    assert path.read_bytes() == tiny_bytes
    assert not (wenv.cache / f"{FILE}.part").exists()

    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(path)(x), model_from_checkpoint(tiny_checkpoint)(x))

    # The default for denoise/gray/sigma 25 is the same file, now from the cache.
    assert resolve_weights(None, "denoise", 1, 25, quiet=True) == path
    assert server.state.hits == 1


def test_verified_file_is_not_rehashed_until_it_changes(server, wenv, tiny_bytes, monkeypatch):
    serve_tiny(server, wenv, tiny_bytes)
    path = resolve_weights(NAME, quiet=True)
    assert json.loads((wenv.cache / f"{FILE}.verified").read_text())["sha256"] == sha256_of(tiny_bytes)

    calls = []
    real_hash = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: calls.append(p) or real_hash(p))
    assert resolve_weights(NAME, quiet=True) == path
    assert calls == []                       # trusted the sidecar record

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert resolve_weights(NAME, quiet=True) == path
    assert calls == [path]                   # mtime changed: hashed again
    assert server.state.hits == 1


def test_download_policy_is_patched_where_it_is_read(wenv):
    # Set on the package, RETRIES would be a copy the download code never reads.
    assert all(not hasattr(weights, name) for name in ("RETRIES", "BACKOFF_S", "TIMEOUT_S"))
    assert (download.RETRIES, download.BACKOFF_S) == (2, 0.01)   # wenv's short policy, in use


def test_dropped_connection_resumes_with_range_on_next_call(server, wenv, tiny_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    serve_tiny(server, wenv, tiny_bytes)
    server.state.drop_first = 1
    with pytest.raises(MagnError, match="next try resumes"):
        resolve_weights(NAME, quiet=True)
    half = len(tiny_bytes) // 2
    part = wenv.cache / f"{FILE}.part"
    assert part.stat().st_size == half
    assert not (wenv.cache / FILE).exists()

    path = resolve_weights(NAME, quiet=True)
    assert [r["range"] for r in server.state.log] == [None, f"bytes={half}-"]
    assert server.state.log[1]["status"] == 206
    assert path.read_bytes() == tiny_bytes and not part.exists()


def test_dropped_connection_resumes_within_one_call(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    server.state.drop_first = 1
    path = resolve_weights(NAME, quiet=True)
    assert [r["range"] for r in server.state.log] == [None, f"bytes={len(tiny_bytes) // 2}-"]
    assert path.read_bytes() == tiny_bytes


def test_server_ignoring_range_restarts_cleanly(server, wenv, tiny_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    serve_tiny(server, wenv, tiny_bytes)
    server.state.drop_first = 1
    server.state.ignore_range = True
    with pytest.raises(MagnError):
        resolve_weights(NAME, quiet=True)
    path = resolve_weights(NAME, quiet=True)
    assert server.state.log[1]["range"] == f"bytes={len(tiny_bytes) // 2}-"
    assert server.state.log[1]["status"] == 200          # whole body again
    assert path.read_bytes() == tiny_bytes               # not half + whole
    assert weights.is_verified(path, sha256_of(tiny_bytes), wenv.cache, rehash=True)


def test_stale_partial_file_gets_416_and_restarts(server, wenv, tiny_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)      # the restart after 416 is not a retry
    server.state.files["/x/model.safetensors"] = tiny_bytes
    target = wenv.cache / "model.safetensors"
    target.parent.mkdir(parents=True)
    # Left by an interrupted download of a longer, older file at that URL.
    target.with_name("model.safetensors.part").write_bytes(b"\0" * (len(tiny_bytes) + 10))
    weights.download_file(server.url("/x/model.safetensors"), target, quiet=True)
    assert [r["status"] for r in server.state.log] == [416, 200]
    assert target.read_bytes() == tiny_bytes


def test_http_proxy_from_environment_is_used(server, wenv, tiny_bytes, monkeypatch):
    # requests' trust_env: a proxy receives the absolute URL as the request path.
    url = f"http://weights.example.invalid/ckpt/{FILE}"
    server.state.files[url] = tiny_bytes
    wenv.write_manifest([make_entry(NAME, tiny_bytes, [url])])
    for var in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base)
    assert resolve_weights(NAME, quiet=True).read_bytes() == tiny_bytes
    assert [r["path"] for r in server.state.log] == [url]


def test_wrong_checksum_leaves_nothing(server, wenv, tiny_bytes):
    tampered = bytearray(tiny_bytes)
    tampered[-1] ^= 0xFF
    serve_tiny(server, wenv, tiny_bytes)
    server.state.files[f"/ckpt/{FILE}"] = bytes(tampered)    # same size, other content
    with pytest.raises(MagnError, match="sha256") as err:
        resolve_weights(NAME, quiet=True)
    assert "\n" not in str(err.value)
    assert leftovers(wenv) == []


def test_wrong_size_leaves_nothing(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    server.state.files[f"/ckpt/{FILE}"] = tiny_bytes + b"extra"
    with pytest.raises(MagnError, match="bytes, expected"):
        resolve_weights(NAME, quiet=True)
    assert leftovers(wenv) == []


def test_404_fails_fast(server, wenv, tiny_bytes):
    url = serve_tiny(server, wenv, tiny_bytes)
    server.state.status = 404
    with pytest.raises(MagnError, match="HTTP 404") as err:
        resolve_weights(NAME, quiet=True)
    assert url in str(err.value)
    assert server.state.hits == 1
    assert leftovers(wenv) == []


def test_500_retried_then_fails(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    server.state.status = 500
    with pytest.raises(MagnError, match="failed after 3 attempts: HTTP 500"):
        resolve_weights(NAME, quiet=True)
    assert server.state.hits == 1 + download.RETRIES
    assert leftovers(wenv) == []


def test_mirror_env_is_tried_first(server, wenv, tiny_bytes, monkeypatch):
    server.state.files[f"/mirror/{FILE}"] = tiny_bytes
    wenv.write_manifest([make_entry(NAME, tiny_bytes, [server.url(f"/nowhere/{FILE}")])])
    monkeypatch.setenv("MAGN_WEIGHTS_URL", server.url("/mirror/"))
    assert resolve_weights(NAME, quiet=True).read_bytes() == tiny_bytes
    assert [r["path"] for r in server.state.log] == [f"/mirror/{FILE}"]


def test_next_url_is_tried_after_a_failure(server, wenv, tiny_bytes):
    server.state.files[f"/b/{FILE}"] = tiny_bytes
    wenv.write_manifest([make_entry(NAME, tiny_bytes, [server.url(f"/a/{FILE}"), server.url(f"/b/{FILE}")])])
    assert resolve_weights(NAME, quiet=True).read_bytes() == tiny_bytes
    assert [r["status"] for r in server.state.log] == [404, 200]


def test_url_spec_downloads_into_cache(server, wenv, tiny_bytes, capsys):
    server.state.files["/x/model.safetensors"] = tiny_bytes
    url = server.url("/x/model.safetensors")
    path = resolve_weights(url)
    assert path.parent == wenv.cache / "urls" and path.name.endswith("-model.safetensors")
    assert path.read_bytes() == tiny_bytes
    assert "no sha256" in capsys.readouterr().err            # said it is only size-checked

    good = resolve_weights(f"{url}#sha256={sha256_of(tiny_bytes)}", quiet=True)
    assert good.read_bytes() == tiny_bytes
    with pytest.raises(MagnError, match="sha256"):
        resolve_weights(f"{url}#sha256={'0' * 64}", quiet=True)


# --------------------------------------------------------------------------- local and offline

def test_explicit_path_is_returned_as_is(wenv, tiny_checkpoint):
    assert resolve_weights(str(tiny_checkpoint)) == tiny_checkpoint


def test_unknown_spec_errors(wenv):
    with pytest.raises(MagnError, match="checkpoint file not found"):
        resolve_weights("missing/model.safetensors")
    with pytest.raises(MagnError, match="neither a checkpoint file nor a checkpoint name"):
        resolve_weights("no-such-name")


def test_shipped_file_is_used_without_network(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    (wenv.manifest_dir / FILE).write_bytes(tiny_bytes)
    assert resolve_weights(NAME, quiet=True) == wenv.manifest_dir / FILE
    assert server.state.hits == 0
    assert not list(wenv.manifest_dir.glob("*.verified"))    # never writes into the repository


def test_offline_with_cached_file_makes_no_request(server, wenv, tiny_bytes, monkeypatch):
    serve_tiny(server, wenv, tiny_bytes)
    path = resolve_weights(NAME, quiet=True)
    assert resolve_weights(NAME, offline=True) == path
    monkeypatch.setenv("MAGN_OFFLINE", "1")
    assert resolve_weights(NAME) == path
    assert server.state.hits == 1


def test_offline_without_cached_file_says_where_to_put_it(server, wenv, tiny_bytes, monkeypatch):
    url = serve_tiny(server, wenv, tiny_bytes)
    monkeypatch.setenv("MAGN_OFFLINE", "1")
    with pytest.raises(MagnError) as err:
        resolve_weights(NAME)
    message = str(err.value)
    assert "\n" not in message
    assert url in message and str(wenv.cache / FILE) in message and sha256_of(tiny_bytes) in message
    assert server.state.hits == 0


def test_unpublished_checkpoint_says_where_to_put_it(wenv, tiny_bytes):
    wenv.write_manifest([make_entry(NAME, tiny_bytes, [])])
    with pytest.raises(MagnError, match="no download URL yet") as err:
        resolve_weights(NAME)
    assert str(wenv.cache / FILE) in str(err.value) and sha256_of(tiny_bytes) in str(err.value)


def test_corrupt_cached_file_is_replaced(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    wenv.cache.mkdir(parents=True)
    (wenv.cache / FILE).write_bytes(b"\0" * len(tiny_bytes))
    assert resolve_weights(NAME, quiet=True).read_bytes() == tiny_bytes


# --------------------------------------------------------------------------- two processes

_CHILD = """
import sys
from magncli.weights import resolve_weights
print(resolve_weights(sys.argv[1], quiet=True))
"""


def test_two_processes_share_one_download(server, wenv, tiny_bytes):
    from filelock import FileLock
    serve_tiny(server, wenv, tiny_bytes)
    server.state.delay_s = 0.1           # ~0.7 s per download
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    wenv.cache.mkdir(parents=True)
    # Hold the download lock while both children start, so that both reach it and
    # overlap; without a working lock each would then download the file.
    with FileLock(str(wenv.cache / FILE) + ".lock"):
        children = [subprocess.Popen([sys.executable, "-c", _CHILD, NAME], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        time.sleep(1.0)
    outputs = [c.communicate(timeout=60) for c in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
    assert [out.strip() for out, _ in outputs] == [str(wenv.cache / FILE)] * 2
    assert (wenv.cache / FILE).read_bytes() == tiny_bytes
    assert server.state.full_downloads(f"/ckpt/{FILE}") == 1
    assert server.state.hits == 1        # the second process found the verified file
    assert not (wenv.cache / f"{FILE}.part").exists()


# --------------------------------------------------------------------------- manifest

def _bad(entry_changes=None, top_changes=None, drop=None):
    entry = make_entry(NAME, b"x")
    entry.update(entry_changes or {})
    if drop:
        del entry[drop]
    raw = {"schema": 1, "base_url": None, "checkpoints": [entry]}
    raw.update(top_changes or {})
    return raw


@pytest.mark.parametrize("raw, message", [
    (_bad(top_changes={"checkpoint": []}), "unknown key 'checkpoint'"),
    (_bad({"sha": "0" * 64}), f"{NAME}.*unknown key 'sha'"),
    (_bad({"file": "../x.safetensors"}), f"{NAME}.*bare file name"),
    (_bad({"file": "/abs/x.safetensors"}), f"{NAME}.*bare file name"),
    (_bad({"file": "sub/x.safetensors"}), f"{NAME}.*bare file name"),
    (_bad({"file": "sub\\x.safetensors"}), f"{NAME}.*bare file name"),
    (_bad({"file": ""}), f"{NAME}.*non-empty"),
    (_bad({"sha256": "abc"}), f"{NAME}.*sha256"),
    (_bad({"sha256": "g" * 64}), f"{NAME}.*sha256"),
    (_bad({"sha256": "0" * 64 + "\n"}), f"{NAME}.*sha256"),
    (_bad({"sha256": "A" * 64}), f"{NAME}.*sha256"),
    (_bad({"name": "bad name"}), "name 'bad name'"),
    (_bad(drop="sha256"), f"{NAME}.*missing key 'sha256'"),
    (_bad({"serves": {"task": "denoise", "channels": 1, "quality": [10]}}), f"{NAME}.*unknown key 'quality'"),
    (_bad({"serves": {"task": "denoise", "channels": 1}}), f"{NAME}.*exactly one of"),
    (_bad({"serves": {"task": "denoise", "channels": 2, "sigma": [25]}}), f"{NAME}.*channels"),
    (_bad({"urls": ["ftp://x/y"]}), f"{NAME}.*urls"),
])
def test_manifest_validation_errors(tmp_path, raw, message):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(MagnError, match=message):
        load_manifest(path)


def test_manifest_duplicates_and_two_defaults(tmp_path):
    path = tmp_path / "manifest.json"
    a = make_entry("a", b"1")
    path.write_text(json.dumps({"checkpoints": [a, dict(a, file="b.safetensors")]}))
    with pytest.raises(MagnError, match="'a' is listed twice"):
        load_manifest(path)
    b = make_entry("b", b"2", default=True)
    path.write_text(json.dumps({"checkpoints": [dict(a, default=True), b]}))
    with pytest.raises(MagnError, match="both 'a' and 'b' are the default"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(MagnError, match="not valid JSON"):
        load_manifest(path)


def test_repository_manifest_is_valid():
    manifest = load_manifest(REPO_ROOT / "weights" / "manifest.json")   # validates every entry
    assert manifest.base_url is None       # the shipped files serve; tests/test_published_weights.py


def test_select_default(wenv, caplog):
    wenv.write_manifest([
        make_entry("gray-s25", b"1", sigma=[25]),
        make_entry("gray-blind", b"2", sigma_range=[0, 55], default=True),
        make_entry("color-s50", b"3", channels=3, sigma=[50]),
        make_entry("jpeg-color", b"4", task="dejpeg", channels=3, quality_range=[10, 40]),
        make_entry("mosaic", b"5", task="demosaic", channels=3),
    ])
    assert select_default("denoise", 1, 25).name == "gray-s25"       # per-level beats blind
    assert select_default("denoise", 1, 30).name == "gray-blind"     # blind range covers it
    assert select_default("denoise", 1).name == "gray-blind"         # no level: the default
    assert select_default("denoise", 3).name == "color-s50"          # the only one
    assert select_default("dejpeg", 3, 20).name == "jpeg-color"
    assert select_default("demosaic", 3).name == "mosaic"
    # Outside every trained level: the nearest model, with a warning that says so.
    with caplog.at_level(logging.WARNING, logger="magn"):
        assert select_default("denoise", 1, 70).name == "gray-blind"  # 15 from 0-55, 45 from 25
        assert select_default("dejpeg", 3, 85).name == "jpeg-color"
    assert [r.getMessage() for r in caplog.records] == [
        "no pretrained denoise model for gray images was trained for sigma 70; "
        "using gray-blind (sigma 0-55 (blind)), the nearest",
        "no pretrained dejpeg model for color images was trained for quality 85; "
        "using jpeg-color (quality 10-40 (blind)), the nearest"]
    # A library message names the parameter (the CLI shows it as --weights: test_weights_cli).
    with pytest.raises(MagnError, match=r"^no pretrained dejpeg model for gray images yet; pass weights=PATH$"):
        select_default("dejpeg", 1)


# --------------------------------------------------------------------------- hostile caches and mirrors (#37)

def test_a_link_planted_as_the_partial_download_never_writes_outside_the_cache(server, wenv, tiny_bytes, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    serve_tiny(server, wenv, tiny_bytes)
    wenv.cache.mkdir(parents=True)
    (wenv.cache / f"{FILE}.part").symlink_to(victim)
    path = resolve_weights(NAME, quiet=True)
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and path.read_bytes() == tiny_bytes


def test_a_mirror_sending_more_than_the_declared_size_is_cut_off(server, wenv, tiny_bytes, monkeypatch):
    serve_tiny(server, wenv, tiny_bytes)
    big = tiny_bytes + b"\0" * (4 << 20)
    server.state.files[f"/ckpt/{FILE}"] = big
    with pytest.raises(MagnError, match=rf"more than the declared size \(\d+ bytes, expected {len(tiny_bytes)}\)"):
        resolve_weights(NAME, quiet=True)
    assert leftovers(wenv) == [] and server.state.hits == 1      # not retried either


def test_a_mirror_without_a_length_is_cut_off_at_the_declared_size(server, wenv, tiny_bytes, monkeypatch):
    serve_tiny(server, wenv, tiny_bytes)
    server.state.files[f"/ckpt/{FILE}"] = tiny_bytes * 50
    import requests
    original = requests.Session.get

    def no_length(self, *a, **kw):
        resp = original(self, *a, **kw)
        resp.headers.pop("Content-Length", None)
        return resp
    monkeypatch.setattr(requests.Session, "get", no_length)
    with pytest.raises(MagnError, match="more than the declared size"):
        resolve_weights(NAME, quiet=True)
    assert leftovers(wenv) == []


def test_a_dripping_mirror_is_a_stall_not_a_download_for_weeks(server, wenv, tiny_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    monkeypatch.setattr(download, "STALL_S", 0.3)
    monkeypatch.setattr(download, "STALL_MIN_BYTES", 1 << 20)
    serve_tiny(server, wenv, tiny_bytes)
    server.state.delay_s = 0.05                   # 256 bytes every 50 ms
    started = time.monotonic()
    with pytest.raises(MagnError, match="stalled"):
        resolve_weights(NAME, quiet=True)
    assert time.monotonic() - started < 5


def test_an_unwritable_cache_is_one_line(server, wenv, tiny_bytes, monkeypatch):
    serve_tiny(server, wenv, tiny_bytes)
    wenv.home.parent.mkdir(parents=True, exist_ok=True)
    wenv.home.write_text("not a folder")          # works as root too, unlike chmod
    with pytest.raises(MagnError, match="cannot write to the weights cache") as err:
        resolve_weights(NAME, quiet=True)
    assert "\n" not in str(err.value)


def test_shipped_weights_work_with_an_unwritable_cache(server, wenv, tiny_bytes):
    serve_tiny(server, wenv, tiny_bytes)
    (wenv.manifest_dir / FILE).write_bytes(tiny_bytes)
    wenv.home.write_text("not a folder")          # the 'verified' note cannot be written
    assert resolve_weights(NAME, quiet=True) == wenv.manifest_dir / FILE


def test_a_download_without_a_terminal_says_how_far_it_is(server, wenv, tiny_bytes, monkeypatch, capsys):
    monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(download, "CHUNK_BYTES", 512)
    serve_tiny(server, wenv, tiny_bytes)
    resolve_weights(NAME, quiet=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "downloading" in line]
    assert lines and lines[-1].endswith(f"{len(tiny_bytes) / 1e6:.1f} of {len(tiny_bytes) / 1e6:.1f} MB")
