"""The local weights cache: where it is, offline mode, and sha256 verification records.

Hashing a checkpoint on every run would be wasted time, so a successful check leaves a
small sidecar record (sha256, size, mtime_ns) that is trusted while the file is
unchanged. Files in the cache keep it beside them; checkpoints shipped in the repository
keep it in the cache, so that the repository is never written to.

Environment: MAGN_HOME (cache root), MAGN_OFFLINE=1 (never touch the network).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from magncli.errors import MagnError
from magncli.fileio import atomic_write_text
from magncli.weights.manifest import Manifest

ENV_HOME = "MAGN_HOME"
ENV_OFFLINE = "MAGN_OFFLINE"
HASH_BLOCK_BYTES = 1 << 20


def weights_cache_dir(model_dir=None) -> Path:
    """model_dir, else MAGN_HOME/weights, else the platform's user cache dir + /weights."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser() / "weights"
    import platformdirs
    return Path(platformdirs.user_cache_dir("magn")) / "weights"


def is_offline(offline: Optional[bool] = None) -> bool:
    """The explicit flag if given, else MAGN_OFFLINE (1/true/yes/on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def file_sha256(path) -> str:
    """The file's sha256 as 64 lowercase hex digits (the manifest's form)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar_path(path: Path, cache_dir: Path) -> Path:
    """Where the 'already verified' record of `path` lives. Files in the cache keep it
    beside them; others (shipped in the repository) keep it in the cache, so that the
    repository is never written to."""
    path = path.resolve()
    cache_dir = cache_dir.resolve()
    if path.is_relative_to(cache_dir):
        return path.with_name(path.name + ".verified")
    return cache_dir / "shipped" / (path.name + ".verified")


def record_verified(path: Path, sha256: str, cache_dir: Path) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "path": str(path.resolve())}
    try:
        atomic_write_text(_sidecar_path(path, cache_dir), json.dumps(record) + "\n")
    except (OSError, MagnError):  # atomic_write_text says "cannot write" as a MagnError
        pass  # a read-only cache only costs a re-hash next time


def _forget_verified(path: Path, cache_dir: Path) -> None:
    try:
        _sidecar_path(path, cache_dir).unlink(missing_ok=True)
    except OSError:
        pass


def is_verified(path, sha256: str, cache_dir, *, rehash: bool = False) -> bool:
    """Whether the file at `path` has this sha256. Hashing a checkpoint on every run would
    be wasted time, so a sidecar record (sha256, size, mtime_ns) written after a successful
    check is trusted while size and mtime are unchanged; `rehash=True` ignores it."""
    path, cache_dir = Path(path), Path(cache_dir)
    st = path.stat()
    if not rehash:
        try:
            record = json.loads(_sidecar_path(path, cache_dir).read_text())
            if record == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "path": str(path.resolve())}:
                return True
        except (OSError, ValueError):
            pass
    if file_sha256(path) != sha256:
        _forget_verified(path, cache_dir)
        return False
    record_verified(path, sha256, cache_dir)
    return True


@dataclass
class VerifyResult:
    name: str
    where: str          # "cached" or "shipped"
    path: Path
    ok: bool
    expected: str
    actual: str


def verify_local_files(manifest: Manifest, model_dir=None, names: Optional[Sequence[str]] = None) -> List[VerifyResult]:
    """Re-hash every cached and shipped copy of the manifest's checkpoints (no sidecar trust)."""
    cache_dir = weights_cache_dir(model_dir)
    entries = [manifest.get(n) for n in names] if names else manifest.entries
    results = []
    for entry in entries:
        cached, shipped = cache_dir / entry.file, manifest.shipped_dir / entry.file
        for where, path in (("cached", cached), ("shipped", shipped)):
            if not path.is_file() or (where == "shipped" and path.resolve() == cached.resolve()):
                continue  # (model_dir pointing at the manifest folder: one file, checked once)
            actual = file_sha256(path)
            ok = actual == entry.sha256
            if ok:
                record_verified(path, entry.sha256, cache_dir)
            else:
                _forget_verified(path, cache_dir)
            results.append(VerifyResult(entry.name, where, path, ok, entry.sha256, actual))
    return results

