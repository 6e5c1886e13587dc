"""Test helpers for the pretrained-weights code: a tiny registered architecture, a tiny
real checkpoint, a local HTTP server whose misbehaviour each test chooses, and an
isolated MAGN_HOME + manifest per test.

Imported by test_weights*.py; the fixtures below become theirs by `from ... import`.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from torch import nn

from magncli.weights import download
from magncli.checkpoints import save_checkpoint
from magncli.models.registry import ModelFacts, build_model, list_archs, register_arch

TINY_ARCH = "tinyweights"

# Test-only architecture (never the real MAGN): two convolutions with a residual.
# Guarded because several test modules import this file.
if TINY_ARCH not in list_archs():
    @register_arch(TINY_ARCH, {"in_channels": 1, "n_feats": 8})
    class TinyWeightsNet(nn.Module):
        """Tiny residual 2-conv net, for weights tests only."""

        def __init__(self, in_channels: int = 1, n_feats: int = 8):
            super().__init__()
            self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
            self.tail = nn.Conv2d(n_feats, in_channels, 3, padding=1)

        @property
        def facts(self) -> ModelFacts:
            return ModelFacts(in_channels=self.head.in_channels)

        def forward(self, x):
            return x + self.tail(torch.relu(self.head(x)))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real safetensors checkpoint of the tiny arch, a few KB."""
    torch.manual_seed(1)
    model = build_model(TINY_ARCH, in_channels=1, n_feats=16)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-denoise-gray.safetensors"
    save_checkpoint(path, model, {"note": "weights tests"})
    return path


@pytest.fixture(scope="session")
def tiny_bytes(tiny_checkpoint) -> bytes:
    return tiny_checkpoint.read_bytes()


# --------------------------------------------------------------------------- HTTP server

@dataclass
class ServerState:
    """What the server serves, how it misbehaves, and what it saw."""
    files: Dict[str, bytes] = field(default_factory=dict)   # URL path -> body
    status: Optional[int] = None        # answer every request with this error status
    drop_first: int = 0                 # cut the connection halfway through the first N bodies
    ignore_range: bool = False          # always answer 200 with the whole body
    delay_s: float = 0.0                # pause between 256-byte chunks (slow server)
    log: List[dict] = field(default_factory=list)            # one dict per request
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hits(self) -> int:
        return len(self.log)

    def full_downloads(self, path: str) -> int:
        return sum(1 for r in self.log if r["path"] == path and r["status"] == 200
                   and r["sent"] == len(self.files[path]))


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the connection closes after each response, so a cut body is detectable.
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state: ServerState = self.server.state
        record = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0}
        with state.lock:
            state.log.append(record)
            drop = sum(1 for r in state.log if r["path"] == self.path) <= state.drop_first
        if state.status is not None:
            record["status"] = state.status
            self.send_error(state.status)
            return
        body = state.files.get(self.path)
        if body is None:
            record["status"] = 404
            self.send_error(404)
            return
        start = 0
        if record["range"] and not state.ignore_range:
            start = int(record["range"].split("=")[1].split("-")[0])
            if start >= len(body):
                record["status"] = 416
                self.send_error(416)
                return
        payload = body[start:]
        record["status"] = 206 if start else 200
        self.send_response(record["status"])
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        to_send = payload[: len(payload) // 2] if drop else payload
        try:
            for i in range(0, len(to_send), 256):
                self.wfile.write(to_send[i:i + 256])
                self.wfile.flush()
                record["sent"] += len(to_send[i:i + 256])
                if state.delay_s:
                    threading.Event().wait(state.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        # When drop is set we return early: the server closes the socket mid-body.


class LocalServer:
    def __init__(self):
        self.state = ServerState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


# --------------------------------------------------------------------------- isolated env

class WeightsEnv:
    """tmp MAGN_HOME + a tmp manifest; helpers to write manifest entries."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.cache = self.home / "weights"
        self.manifest_dir = root / "repo_weights"
        self.manifest_dir.mkdir()
        self.manifest_path = self.manifest_dir / "manifest.json"
        self.write_manifest([])

    def write_manifest(self, entries: List[dict], base_url=None, **extra) -> Path:
        raw = {"schema": 1, "base_url": base_url, "checkpoints": entries, **extra}
        self.manifest_path.write_text(json.dumps(raw, indent=2))
        return self.manifest_path


def make_entry(name: str, data: bytes, urls=(), *, task="denoise", channels=1,
               file=None, default=False, sha256=None, size=None, **levels) -> dict:
    """A manifest entry for checkpoint bytes `data` (levels default to sigma [25])."""
    if task == "denoise" and not levels:
        levels = {"sigma": [25]}
    return {
        "name": name,
        "serves": {"task": task, "channels": channels, **levels},
        "arch": TINY_ARCH,
        "config": {"in_channels": channels, "n_feats": 16},
        "file": file or f"{name}.safetensors",
        "size": len(data) if size is None else size,
        "sha256": sha256 or sha256_of(data),
        "urls": list(urls),
        "default": default,
    }


@pytest.fixture
def wenv(tmp_path, monkeypatch) -> WeightsEnv:
    env = WeightsEnv(tmp_path)
    monkeypatch.setenv("MAGN_HOME", str(env.home))
    monkeypatch.setenv("MAGN_MANIFEST", str(env.manifest_path))
    monkeypatch.delenv("MAGN_WEIGHTS_URL", raising=False)
    monkeypatch.delenv("MAGN_OFFLINE", raising=False)
    # The test server is local: never route it through a proxy the machine may have set.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Short retries so that failure tests take milliseconds.
    monkeypatch.setattr(download, "RETRIES", 2)
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    monkeypatch.setattr(download, "TIMEOUT_S", (5.0, 10.0))
    return env


REPO_ROOT = Path(__file__).resolve().parents[1]
