"""Pretrained weights: the manifest, default selection, the cache and downloads.

The manifest (weights/manifest.json, one human-editable JSON file) lists every published
checkpoint with its sha256. Everything else here turns "which weights?" into a verified
local file:

    entry = select_default("denoise", channels=1, level=25)   # which checkpoint serves this
    path = resolve_weights(None, "denoise", 1, 25)             # ... and where it is on disk
    path = resolve_weights("magn-denoise-gray-s25")            # by manifest name
    path = resolve_weights("/some/file.safetensors")           # an explicit file, as is
    path = resolve_weights("https://host/x.safetensors#sha256=...")  # any URL, cached

A manifest checkpoint is looked for, in order: in the cache (MAGN_HOME/weights or the
platform's user cache dir), next to the manifest (checkpoints shipped in the repository),
then downloaded from MAGN_WEIGHTS_URL + file name, the entry's URLs and the manifest's
base_url. Downloads follow the pooch / torch.hub pattern: stream into `<file>.part`
(resumed with an HTTP Range request after an interruption), check size and sha256, then
rename atomically, all under a file lock so that concurrent processes share one download.

Environment: MAGN_HOME (cache root), MAGN_MANIFEST (another manifest file),
MAGN_WEIGHTS_URL (a mirror's base URL), MAGN_OFFLINE=1 (never touch the network).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote, urldefrag, urlsplit

import magncli
from magncli.errors import MagnError
from magncli.fileio import atomic_path, atomic_write_text

log = logging.getLogger("magn")

ENV_HOME = "MAGN_HOME"
ENV_MANIFEST = "MAGN_MANIFEST"
ENV_MIRROR = "MAGN_WEIGHTS_URL"
ENV_OFFLINE = "MAGN_OFFLINE"

# Download policy. Module-level so that tests (and, if ever needed, callers) can shorten it.
RETRIES = 3                 # extra attempts after the first, for connection errors, timeouts, 5xx
BACKOFF_S = 1.0             # wait before retry k is BACKOFF_S * 2**(k-1)
TIMEOUT_S = (10.0, 60.0)    # (connect, read) seconds, as requests takes them
CHUNK_BYTES = 1 << 20

# Which option carries the degradation level for each task; None: the task has no level.
LEVEL_KEY: Dict[str, Optional[str]] = {"denoise": "sigma", "dejpeg": "quality", "demosaic": None}
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_MANIFEST_KEYS = {"schema", "base_url", "checkpoints", "comment"}
_ENTRY_REQUIRED = {"name", "serves", "arch", "config", "file", "size", "sha256"}
_ENTRY_OPTIONAL = {"urls", "default", "provenance", "scores", "notes"}
_PROVENANCE_KEYS = {"training_data", "steps", "batch_size", "patch_size", "hardware",
                    "wall_time", "cpu_hours", "sessions", "validation", "planned_steps", "commit",
                    "command", "notes"}
_SCORE_REQUIRED = {"dataset", "psnr", "command"}
_SCORE_OPTIONAL = {"level", "ssim", "psnr_y", "ssim_y", "channels", "n_images", "notes"}


# --------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint of the manifest (see weights/README.md for the fields)."""
    name: str
    task: str                       # "denoise" | "dejpeg" | "demosaic"
    channels: int                   # 1 (gray) or 3 (color)
    levels: Tuple[float, ...]       # the levels it was trained for (per-level model)
    level_range: Optional[Tuple[float, float]]  # (lo, hi) for a blind model, else None
    arch: str
    config: dict
    file: str
    size: int
    sha256: str
    urls: Tuple[str, ...] = ()
    default: bool = False
    provenance: dict = field(default_factory=dict)
    scores: Tuple[dict, ...] = ()

    @property
    def blind(self) -> bool:
        return self.level_range is not None

    @property
    def level_key(self) -> Optional[str]:
        return LEVEL_KEY[self.task]

    def serves(self, level) -> bool:
        """Whether this checkpoint is meant for images degraded at `level`."""
        if self.level_key is None or level is None:
            return True
        if self.level_range is not None:
            return self.level_range[0] <= level <= self.level_range[1]
        return level in self.levels

    def describe_levels(self) -> str:
        """'sigma 25', 'quality 10-40 (blind)' or '' for tasks without a level."""
        if self.level_key is None:
            return ""
        if self.level_range is not None:
            lo, hi = self.level_range
            return f"{self.level_key} {_num(lo)}-{_num(hi)} (blind)"
        return f"{self.level_key} {', '.join(_num(v) for v in self.levels)}"

    def headline_score(self) -> Optional[str]:
        """The first listed score, e.g. '30.44 dB Set12 sigma 25', or None."""
        if not self.scores:
            return None
        s = self.scores[0]
        level = f" {self.level_key} {_num(s['level'])}" if s.get("level") is not None and self.level_key else ""
        return f"{s['psnr']:.2f} dB {s['dataset']}{level}"


@dataclass
class Manifest:
    path: Path
    base_url: Optional[str]
    entries: List[WeightsEntry]
    raw: dict  # the JSON as read, kept so that `add` rewrites the file without reordering it

    @property
    def shipped_dir(self) -> Path:
        """Checkpoints shipped with the repository live next to the manifest."""
        return self.path.parent

    def find(self, name: str) -> Optional[WeightsEntry]:
        return next((e for e in self.entries if e.name == name), None)

    def get(self, name: str) -> WeightsEntry:
        entry = self.find(name)
        if entry is None:
            known = ", ".join(e.name for e in self.entries) or "none yet"
            raise MagnError(f"no checkpoint named {name!r} in {self.path} (known: {known})")
        return entry


def default_manifest_path() -> Path:
    """MAGN_MANIFEST if set, else the checkout's weights/manifest.json, else the copy of
    weights/ that a wheel installs as the package data magncli/_weights/."""
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env).expanduser()
    package = Path(magncli.__file__).resolve().parent
    checkout = package.parent / "weights" / "manifest.json"
    return checkout if checkout.is_file() else package / "_weights" / "manifest.json"


def load_manifest(path=None) -> Manifest:
    """Read and validate the manifest; any problem is a MagnError naming the entry."""
    path = Path(path).expanduser() if path is not None else default_manifest_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MagnError(f"weights manifest not found at {path} (set {ENV_MANIFEST})") from None
    except OSError as e:
        raise MagnError(f"{path}: cannot read the weights manifest ({e.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise MagnError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return parse_manifest(raw, path)


def parse_manifest(raw, path) -> Manifest:
    """Validate manifest JSON (already parsed) and build the Manifest."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise MagnError(f"{path}: the manifest must be a JSON object")
    _check_keys(raw, set(), _MANIFEST_KEYS, f"{path}")
    if raw.get("schema", 1) != 1:
        raise MagnError(f"{path}: unsupported manifest schema {raw.get('schema')!r} (this magn reads 1)")
    base_url = raw.get("base_url")
    if base_url is not None and not _is_http_url(base_url):
        raise MagnError(f"{path}: base_url must be null or an http(s) URL, not {base_url!r}")
    items = raw.get("checkpoints", [])
    if not isinstance(items, list):
        raise MagnError(f"{path}: 'checkpoints' must be a list")

    entries: List[WeightsEntry] = []
    for i, item in enumerate(items):
        label = f"{path}: checkpoint #{i + 1}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
        entries.append(_parse_entry(item, label))

    seen_names, seen_files, defaults = {}, {}, {}
    for e in entries:
        if e.name in seen_names:
            raise MagnError(f"{path}: checkpoint name {e.name!r} is listed twice")
        if e.file in seen_files:
            raise MagnError(f"{path}: file {e.file!r} is listed by both {seen_files[e.file]!r} and {e.name!r}")
        seen_names[e.name] = e
        seen_files[e.file] = e.name
        if e.default:
            key = (e.task, e.channels)
            if key in defaults:
                raise MagnError(f"{path}: both {defaults[key]!r} and {e.name!r} are the default "
                                f"{e.task} model for {_kind(e.channels)} images")
            defaults[key] = e.name
    return Manifest(path=path, base_url=base_url, entries=entries, raw=raw)


def _parse_entry(item, label) -> WeightsEntry:
    if not isinstance(item, dict):
        raise MagnError(f"{label}: must be a JSON object")
    _check_keys(item, _ENTRY_REQUIRED, _ENTRY_REQUIRED | _ENTRY_OPTIONAL, label)

    name = item["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise MagnError(f"{label}: name {name!r} must be letters, digits, '.', '_' or '-'")
    file = item["file"]
    problem = unsafe_file_name(file)
    if problem:
        raise MagnError(f"{label}: file {file!r} {problem}")
    sha = item["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise MagnError(f"{label}: sha256 must be 64 lowercase hex digits, not {sha!r}")
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise MagnError(f"{label}: size must be a positive number of bytes, not {size!r}")
    if not isinstance(item["arch"], str) or not item["arch"]:
        raise MagnError(f"{label}: arch must be an architecture name")
    if not isinstance(item["config"], dict):
        raise MagnError(f"{label}: config must be a JSON object")
    urls = item.get("urls", [])
    if not isinstance(urls, list) or not all(_is_http_url(u) for u in urls):
        raise MagnError(f"{label}: urls must be a list of http(s) URLs")
    default = item.get("default", False)
    if not isinstance(default, bool):
        raise MagnError(f"{label}: default must be true or false")
    provenance = item.get("provenance", {})
    if not isinstance(provenance, dict):
        raise MagnError(f"{label}: provenance must be a JSON object")
    _check_keys(provenance, set(), _PROVENANCE_KEYS, f"{label} provenance")
    scores = item.get("scores", [])
    if not isinstance(scores, list):
        raise MagnError(f"{label}: scores must be a list")
    for j, score in enumerate(scores):
        where = f"{label} score #{j + 1}"
        if not isinstance(score, dict):
            raise MagnError(f"{where}: must be a JSON object")
        _check_keys(score, _SCORE_REQUIRED, _SCORE_REQUIRED | _SCORE_OPTIONAL, where)
        if not _is_number(score["psnr"]):
            raise MagnError(f"{where}: psnr must be a number")

    task, channels, levels, level_range = _parse_serves(item["serves"], label)
    return WeightsEntry(name=name, task=task, channels=channels, levels=levels,
                        level_range=level_range, arch=item["arch"], config=dict(item["config"]),
                        file=file, size=size, sha256=sha, urls=tuple(urls), default=default,
                        provenance=dict(provenance), scores=tuple(scores))


def _parse_serves(serves, label):
    """{"task", "channels", and "<level>": [values] or "<level>_range": [lo, hi]}."""
    where = f"{label} serves"
    if not isinstance(serves, dict):
        raise MagnError(f"{where}: must be a JSON object like {{\"task\": \"denoise\", \"channels\": 1, \"sigma\": [25]}}")
    task = serves.get("task")
    if task not in LEVEL_KEY:
        raise MagnError(f"{where}: task must be one of {', '.join(LEVEL_KEY)}, not {task!r}")
    key = LEVEL_KEY[task]
    allowed = {"task", "channels"} | ({key, f"{key}_range"} if key else set())
    _check_keys(serves, {"task", "channels"}, allowed, where)
    channels = serves["channels"]
    if channels not in (1, 3) or isinstance(channels, bool):
        raise MagnError(f"{where}: channels must be 1 (gray) or 3 (color), not {channels!r}")
    if key is None:
        return task, channels, (), None
    if (key in serves) == (f"{key}_range" in serves):
        raise MagnError(f"{where}: give exactly one of {key!r} (levels it was trained for) "
                        f"or '{key}_range' ([lo, hi] for a blind model)")
    if key in serves:
        levels = serves[key]
        if not isinstance(levels, list) or not levels or not all(_is_number(v) for v in levels):
            raise MagnError(f"{where}: {key} must be a non-empty list of numbers")
        return task, channels, tuple(levels), None
    rng = serves[f"{key}_range"]
    if (not isinstance(rng, list) or len(rng) != 2 or not all(_is_number(v) for v in rng)
            or rng[0] > rng[1]):
        raise MagnError(f"{where}: {key}_range must be [lo, hi] with lo <= hi")
    return task, channels, (), (rng[0], rng[1])


def unsafe_file_name(name) -> Optional[str]:
    """Why `name` is not a plain file name to keep in the weights folder, or None if it is."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name"
    if "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        return "must be a bare file name (no directories, no absolute path)"
    if name in (".", "..") or name.startswith("."):
        return "must not start with '.'"
    if not name.endswith(CHECKPOINT_SUFFIXES):
        return f"must end with {', '.join(CHECKPOINT_SUFFIXES)}"
    return None


def _check_keys(obj: dict, required: set, allowed: set, where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise MagnError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(obj))
    if missing:
        raise MagnError(f"{where}: missing key {missing[0]!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_http_url(u) -> bool:
    return isinstance(u, str) and u.startswith(("http://", "https://"))


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _kind(channels: int) -> str:
    return "gray" if channels == 1 else "color"


def save_manifest(raw: dict, path) -> None:
    """Validate then write manifest JSON atomically (temporary file + os.replace)."""
    path = Path(path)
    parse_manifest(raw, path)
    text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)


# --------------------------------------------------------------------------- selection

def _level_distance(entry: WeightsEntry, level) -> float:
    if entry.level_range is not None:
        lo, hi = entry.level_range
        return max(lo - level, level - hi, 0)
    return min(abs(level - v) for v in entry.levels)


def select_default(task: str, channels: int, level=None, *, manifest: Optional[Manifest] = None) -> WeightsEntry:
    """The checkpoint that serves `task` on `channels`-channel images at `level`.

    With a known level, a model trained for exactly that level wins over a blind one whose
    range covers it; a level no model covers gets the nearest one, with a warning. Without
    a level: the entry flagged default, else a blind one, else the only one. A MagnError
    says what is missing and how to pass --weights instead.
    """
    if task not in LEVEL_KEY:
        raise MagnError(f"unknown task {task!r} (known: {', '.join(LEVEL_KEY)})")
    manifest = manifest or load_manifest()
    key = LEVEL_KEY[task]
    candidates = [e for e in manifest.entries if e.task == task and e.channels == channels]
    if not candidates:
        raise MagnError(f"no pretrained {task} model for {_kind(channels)} images yet; pass --weights PATH")

    def prefer_default(entries: List[WeightsEntry]) -> WeightsEntry:
        return next((e for e in entries if e.default), entries[0])

    if key is not None and level is not None:
        exact = [e for e in candidates if not e.blind and level in e.levels]
        if exact:
            return prefer_default(exact)
        blind = [e for e in candidates if e.blind and e.serves(level)]
        if blind:
            return prefer_default(blind)
        # Out of every trained range (a quality-85 photo, sigma 70): a user still expects a
        # result, so use the nearest model and say so, rather than refusing.
        nearest = min(candidates, key=lambda e: (_level_distance(e, level), not e.default))
        log.warning("no pretrained %s model for %s images was trained for %s %s; using %s (%s), "
                    "the nearest", task, _kind(channels), key, _num(level), nearest.name,
                    nearest.describe_levels())
        return nearest

    for group in ([e for e in candidates if e.default], [e for e in candidates if e.blind]):
        if group:
            return group[0]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(e.name for e in candidates)
    hint = f"give the {key} or " if key else ""
    raise MagnError(f"several pretrained {task} models for {_kind(channels)} images and none is the default; "
                    f"{hint}pick one with --weights NAME ({names})")


# --------------------------------------------------------------------------- locations

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


def candidate_urls(entry: WeightsEntry, manifest: Manifest) -> List[str]:
    """Where `entry` may be downloaded from, in the order tried. No URL is invented: a mirror
    (MAGN_WEIGHTS_URL) first, then the entry's own URLs, then the manifest's base_url."""
    urls = []
    mirror = os.environ.get(ENV_MIRROR)
    if mirror:
        urls.append(_join_url(mirror, entry.file))
    urls.extend(entry.urls)
    if manifest.base_url:
        urls.append(_join_url(manifest.base_url, entry.file))
    return list(dict.fromkeys(urls))  # drop duplicates, keep order


def _join_url(base: str, file: str) -> str:
    return base.rstrip("/") + "/" + quote(file)


def entry_status(entry: WeightsEntry, manifest: Manifest, model_dir=None) -> Tuple[str, Optional[Path]]:
    """('cached'|'shipped'|'remote'|'missing', local path or None), from file presence only
    (no hashing: `verify` does that)."""
    cached = weights_cache_dir(model_dir) / entry.file
    if cached.is_file():
        return "cached", cached
    shipped = manifest.shipped_dir / entry.file
    if shipped.is_file():
        return "shipped", shipped
    return ("remote" if candidate_urls(entry, manifest) else "missing"), None


# --------------------------------------------------------------------------- verification

def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
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


def _record_verified(path: Path, sha256: str, cache_dir: Path) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "path": str(path.resolve())}
    try:
        atomic_write_text(_sidecar_path(path, cache_dir), json.dumps(record) + "\n")
    except OSError:
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
    _record_verified(path, sha256, cache_dir)
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
                continue  # (--model-dir pointing at the manifest folder: one file, checked once)
            actual = file_sha256(path)
            ok = actual == entry.sha256
            if ok:
                _record_verified(path, entry.sha256, cache_dir)
            else:
                _forget_verified(path, cache_dir)
            results.append(VerifyResult(entry.name, where, path, ok, entry.sha256, actual))
    return results


# --------------------------------------------------------------------------- downloading

class _Retryable(Exception):
    """A failure worth another attempt (5xx, a cut connection)."""


class _RestartFromZero(_Retryable):
    """The partial file does not fit what the server sends; it was deleted."""


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"magn: {message}", file=sys.stderr)


@contextmanager
def _progress_bar(description: str, total: Optional[int], done: int, quiet: bool) -> Iterator:
    """Yields advance(n_bytes). A rich bar on stderr, only when stderr is a terminal."""
    from rich.console import Console
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _locked(target: Path, quiet: bool) -> Iterator[None]:
    """Hold `<target>.lock`, so that one process downloads while the others wait."""
    from filelock import FileLock, Timeout
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        _say(f"waiting for another magn process to finish downloading {target.name}", quiet)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def download_file(url: str, target, *, sha256: Optional[str] = None, size: Optional[int] = None,
                  quiet: bool = False, cache_dir=None) -> Path:
    """Download `url` to `target` (resumable, verified, atomic) and return `target`.

    If `target` already exists and matches sha256 (or no sha256 is known), nothing is
    fetched: that is how a process that waited for the lock finds the other's download.
    """
    target = Path(target)
    cache_dir = Path(cache_dir) if cache_dir is not None else target.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with _locked(target, quiet):
        if target.is_file():
            if sha256 is None or is_verified(target, sha256, cache_dir):
                return target
            target.unlink()  # a corrupt copy: replace it
        _fetch_to_part(url, part, sha256=sha256, size=size, quiet=quiet)

        actual_size = part.stat().st_size
        if size is not None and actual_size != size:
            part.unlink(missing_ok=True)
            raise MagnError(f"download of {url} has {actual_size} bytes, expected {size}; deleted it")
        if sha256 is not None:
            actual = file_sha256(part)
            if actual != sha256:
                part.unlink(missing_ok=True)
                raise MagnError(f"download of {url} has sha256 {actual}, expected {sha256}; deleted it "
                                "(a wrong or corrupted file on the server?)")
        os.replace(part, target)  # atomic: the final name only ever holds a complete file
        if sha256 is not None:
            _record_verified(target, sha256, cache_dir)
    return target


def _fetch_to_part(url: str, part: Path, *, sha256: Optional[str], size: Optional[int], quiet: bool) -> None:
    """Fill `part` with the whole body of `url`, resuming what an earlier attempt left."""
    import requests
    import urllib3

    # trust_env stays True: requests then honours HTTP(S)_PROXY, NO_PROXY and .netrc.
    session = requests.Session()
    # identity: byte offsets for Range must refer to the file, not to a gzip stream.
    base_headers = {"User-Agent": f"magn/{magncli.__version__}", "Accept-Encoding": "identity"}
    failures = 0
    restarted = False  # one free restart from zero when the partial file proves stale
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset >= size:
                # A leftover as long as the file: it may be complete (crash before the rename).
                if offset == size and (sha256 is None or file_sha256(part) == sha256):
                    return
                part.unlink()
                offset = 0
            headers = dict(base_headers)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as resp:
                    _stream_response(resp, url, part, offset, size, quiet)
                return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError, _Retryable) as e:  # urllib3: errors while reading the body
                reason = _short_reason(e)
                if isinstance(e, _RestartFromZero) and not restarted:
                    restarted = True
                    _say(f"{reason}: restarting the download of {url}", quiet)
                    continue
                failures += 1
                if failures > RETRIES:
                    kept = (f"; {part.stat().st_size} bytes kept in {part}, the next try resumes"
                            if part.exists() else "")
                    raise MagnError(f"download of {url} failed after {failures} attempts: {reason}{kept}") from None
                wait = BACKOFF_S * 2 ** (failures - 1)
                _say(f"download of {url} interrupted ({reason}); retrying in {wait:g} s", quiet)
                time.sleep(wait)
            except requests.RequestException as e:  # bad URL, too many redirects, ...: no retry
                raise MagnError(f"cannot download {url}: {_short_reason(e)}") from None
            except OSError as e:
                raise MagnError(f"cannot write {part}: {e.strerror or e}") from None
    finally:
        session.close()


def _stream_response(resp, url: str, part: Path, offset: int, size: Optional[int], quiet: bool) -> None:
    status = resp.status_code
    if status == 416:  # our partial file no longer fits the server's file: start over
        part.unlink(missing_ok=True)
        raise _RestartFromZero("HTTP 416 for the resumed range")
    if status >= 500:
        raise _Retryable(f"HTTP {status} {resp.reason}")
    if status not in (200, 206):  # 404 and other client errors will not change by retrying
        raise MagnError(f"cannot download {url}: HTTP {status} {resp.reason}")
    if status == 206:
        start = _content_range_start(resp.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink(missing_ok=True)
            raise _RestartFromZero(f"server resumed at byte {start}, not {offset}")
    else:
        offset = 0  # 200: the server sent the whole file (it ignores Range, or none was sent)
    # We asked for identity; a server that compresses anyway gets decoded (its length
    # and Range offsets then count compressed bytes, so only the sha256 check remains).
    encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
    length = resp.headers.get("Content-Length")
    expected_total = offset + int(length) if length and length.isdigit() and not encoded else size

    # read1 (urllib3 >= 2) hands over whatever has arrived, so when the connection drops,
    # every byte received is already in the .part file for the next Range request.
    # (iter_content would lose the last partial chunk.)
    read = getattr(resp.raw, "read1", None) or resp.raw.read
    written = offset
    with open(part, "ab" if offset else "wb") as out, \
            _progress_bar(part.name[:-len(".part")], expected_total, offset, quiet) as advance:
        while True:
            chunk = read(CHUNK_BYTES, decode_content=encoded)
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
            advance(len(chunk))
    if expected_total is not None and written < expected_total:
        raise _Retryable(f"connection closed after {written} of {expected_total} bytes")


def _content_range_start(header: str) -> Optional[int]:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header)
    return int(m.group(1)) if m else None


def _short_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- resolution

def resolve_weights(spec: Union[str, os.PathLike, None] = None, task: Optional[str] = None,
                    channels: Optional[int] = None, level=None, *, model_dir=None,
                    offline: Optional[bool] = None, quiet: bool = False) -> Path:
    """A verified local checkpoint file for `spec`, downloading it if needed.

    spec: an existing file path (returned as is), an http(s) URL (cached; append
    '#sha256=HEX' to verify it), a manifest checkpoint name, or None for the default
    checkpoint of task/channels/level (see select_default).
    """
    offline = is_offline(offline)
    cache_dir = weights_cache_dir(model_dir)
    if spec is not None:
        spec = os.fspath(spec)
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            raise MagnError(f"{spec}: is a directory, not a checkpoint file")
        if _is_http_url(spec):
            return _resolve_url(spec, cache_dir, offline, quiet)
        manifest = load_manifest()
        entry = manifest.find(spec)
        if entry is None:
            if os.sep in spec or "/" in spec or spec.endswith(CHECKPOINT_SUFFIXES):
                raise MagnError(f"{spec}: checkpoint file not found")
            known = ", ".join(e.name for e in manifest.entries) or "none yet"
            raise MagnError(f"{spec!r} is neither a checkpoint file nor a checkpoint name in "
                            f"{manifest.path} (known: {known})")
    else:
        if task is None or channels is None:
            raise ValueError("resolve_weights needs a spec, or task and channels")
        manifest = load_manifest()
        entry = select_default(task, channels, level, manifest=manifest)
    return fetch_checkpoint(entry, manifest, model_dir=model_dir, offline=offline, quiet=quiet)


def local_checkpoint(entry: WeightsEntry, manifest: Manifest, *, model_dir=None,
                     quiet: bool = False) -> Optional[Path]:
    """The verified local copy of a manifest entry (cache first, then shipped), or None."""
    cache_dir = weights_cache_dir(model_dir)
    for where, path in (("cached", cache_dir / entry.file), ("shipped", manifest.shipped_dir / entry.file)):
        if path.is_file():
            if is_verified(path, entry.sha256, cache_dir):
                return path
            _say(f"{where} file {path} does not match its sha256; not using it", quiet)
    return None


def fetch_checkpoint(entry: WeightsEntry, manifest: Manifest, *, model_dir=None,
                     offline: Optional[bool] = None, quiet: bool = False) -> Path:
    """The verified local file of a manifest entry: cache, then shipped copy, then download."""
    local = local_checkpoint(entry, manifest, model_dir=model_dir, quiet=quiet)
    if local is not None:
        return local
    offline = is_offline(offline)
    cache_dir = weights_cache_dir(model_dir)
    cached = cache_dir / entry.file
    cached_is_bad = cached.is_file()
    urls = candidate_urls(entry, manifest)
    where = (f"place {entry.file} (sha256 {entry.sha256}, {entry.size} bytes) at {cached}"
             + (" (the file there now does not match)" if cached_is_bad else ""))
    if offline:
        source = f"download it from {' or '.join(urls)}" if urls else "no download URL is published yet"
        raise MagnError(f"checkpoint {entry.name} is not available offline: {source}, then {where}")
    if not urls:
        raise MagnError(f"checkpoint {entry.name} has no download URL yet: {where}, "
                        f"or set {ENV_MIRROR} to a mirror")
    failures = []
    for url in urls:
        try:
            return download_file(url, cached, sha256=entry.sha256, size=entry.size,
                                 quiet=quiet, cache_dir=cache_dir)
        except MagnError as e:
            failures.append(str(e))
            if len(urls) > 1:
                _say(f"{e}; trying the next URL", quiet)
    if len(failures) == 1:
        raise MagnError(failures[0])
    raise MagnError(f"could not download {entry.name} from any of {len(urls)} URLs: " + " | ".join(failures))


def _resolve_url(url: str, cache_dir: Path, offline: bool, quiet: bool) -> Path:
    """Download a checkpoint given by URL into cache_dir/urls/, named after the URL."""
    plain_url, fragment = urldefrag(url)
    sha256 = None
    if fragment:
        m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
        if not m:
            raise MagnError(f"{url}: the URL fragment must be '#sha256=<64 hex digits>'")
        sha256 = m.group(1).lower()
    file_name = unquote(urlsplit(plain_url).path.rsplit("/", 1)[-1])
    if unsafe_file_name(file_name):
        file_name = "checkpoint.safetensors"
    # The URL's hash in the name keeps two different URLs with one file name apart.
    url_id = hashlib.sha256(plain_url.encode()).hexdigest()[:12]
    target = cache_dir / "urls" / f"{url_id}-{file_name}"
    if target.is_file() and (sha256 is None or is_verified(target, sha256, cache_dir)):
        return target
    if offline:
        checksum = f" (sha256 {sha256})" if sha256 else ""
        raise MagnError(f"{plain_url} is not cached and offline mode is on: download it{checksum} "
                        f"and place it at {target}")
    if sha256 is None:
        _say(f"no sha256 given for {plain_url}: the download is checked only by its size and HTTP "
             "status (append #sha256=<hex> to the URL to verify it)", quiet)
    return download_file(plain_url, target, sha256=sha256, quiet=quiet, cache_dir=cache_dir)


# --------------------------------------------------------------------------- adding entries

def parse_levels(task: str, text: Optional[str]) -> dict:
    """'25' or '15,25,50' -> {"sigma": [...]}; '0-55' -> {"sigma_range": [0, 55]} (blind)."""
    key = LEVEL_KEY.get(task)
    if key is None:
        if text:
            raise MagnError(f"{task} has no levels; drop --levels")
        return {}
    if not text:
        raise MagnError(f"pass --levels for a {task} model: e.g. 25, 15,25,50 or 0-55 (blind)")

    def number(s: str):
        try:
            v = float(s)
        except ValueError:
            raise MagnError(f"--levels: {s!r} is not a number") from None
        return int(v) if v.is_integer() else v

    text = text.strip()
    m = re.fullmatch(r"([0-9.]+)\s*-\s*([0-9.]+)", text)
    if m:
        lo, hi = number(m.group(1)), number(m.group(2))
        if lo > hi:
            raise MagnError(f"--levels: range {text} is backwards")
        return {f"{key}_range": [lo, hi]}
    return {key: [number(s.strip()) for s in text.split(",") if s.strip()]}


def levels_from_metadata(task: str, meta: dict) -> dict:
    """The manifest's level fields from a checkpoint's metadata as `magn train` writes it
    ({"sigma_range": [0, 55]}, {"qualities": [10, 20]}, ...); {} if it records none."""
    key = LEVEL_KEY.get(task)
    if key is None:
        return {}
    plural = {"sigma": "sigma", "quality": "qualities"}[key]
    if meta.get(f"{key}_range") is not None:
        lo, hi = meta[f"{key}_range"]
        return {f"{key}_range": [lo, hi]}
    values = meta.get(plural, meta.get(key))
    if values is None:
        return {}
    return {key: list(values) if isinstance(values, (list, tuple)) else [values]}


def add_checkpoint(file, *, name: str, task: Optional[str] = None, channels: Optional[int] = None,
                   levels: Optional[str] = None, urls: Sequence[str] = (), default: bool = False,
                   copy_file: bool = True, manifest_path=None) -> WeightsEntry:
    """Append a checkpoint file to the manifest (arch/config read from its metadata).

    copy_file: copy it next to the manifest (shipped with the repository); otherwise only
    its file name is recorded (host it somewhere and give --url, or place it in the cache).
    """
    from magncli.checkpoints import checkpoint_arch, read_checkpoint  # imports torch: only when adding

    file = Path(file).expanduser()
    state, meta = read_checkpoint(file)
    arch, config = checkpoint_arch(file, state, meta)
    if channels is None:
        channels = config.get("in_channels")
        if channels is None:
            raise MagnError(f"{file}: its config does not say the channels; pass --channels")
    if task is None:
        task = meta.get("task")
        if task is None:
            raise MagnError(f"{file}: its metadata does not say the task; pass --task")
    if task not in LEVEL_KEY:
        raise MagnError(f"unknown task {task!r} (known: {', '.join(LEVEL_KEY)})")
    if levels or LEVEL_KEY[task] is None:
        serves_levels = parse_levels(task, levels)
    else:  # what `magn train` recorded; parse_levels then asks for --levels
        serves_levels = levels_from_metadata(task, meta) or parse_levels(task, levels)

    manifest = load_manifest(manifest_path)
    if manifest.find(name):
        raise MagnError(f"{manifest.path} already lists a checkpoint named {name!r}")
    if any(e.file == file.name for e in manifest.entries):
        raise MagnError(f"{manifest.path} already lists a checkpoint file named {file.name!r}")

    sha256 = file_sha256(file)
    raw_entry = {
        "name": name,
        "serves": {"task": task, "channels": channels, **serves_levels},
        "arch": arch,
        "config": config,
        "file": file.name,
        "size": file.stat().st_size,
        "sha256": sha256,
        "urls": list(urls),
        "default": default,
        # Filled from the checkpoint when `magn train` wrote it (export.safetensors), else
        # left for the model card (see weights/README.md).
        "provenance": {**{k: None for k in ("training_data", "steps", "hardware", "wall_time", "commit")},
                       **{k: v for k, v in (meta.get("provenance") or {}).items()
                          if k in _PROVENANCE_KEYS}},
        "scores": [],
    }
    new_raw = copy.deepcopy(manifest.raw)
    new_raw.setdefault("checkpoints", []).append(raw_entry)
    parse_manifest(new_raw, manifest.path)  # refuse before touching any file

    if copy_file:
        dest = manifest.shipped_dir / file.name
        if dest.exists() and not (dest.is_file() and os.path.samefile(dest, file)):
            if file_sha256(dest) != sha256:
                raise MagnError(f"{dest} already exists with other content; not overwriting it")
        elif not dest.exists():
            _atomic_copy(file, dest)
    save_manifest(new_raw, manifest.path)
    return load_manifest(manifest.path).get(name)


def scores_from_results(rows: Sequence[dict], model: str) -> List[dict]:
    """Manifest score records from `magn eval --output results.json` rows of `model`."""
    scores = []
    for row in rows:
        if row.get("model") != model:
            continue
        degradation = row.get("degradation") or {}
        level = degradation.get("sigma", degradation.get("quality"))
        score = {"dataset": row["set"], "level": level, "channels": row.get("channels"),
                 "psnr": round(row["psnr"], 4), "ssim": round(row["ssim"], 6),
                 "n_images": row.get("n_images"),
                 "command": row.get("command") or "magn eval (the results file does not record its command)"}
        for key in ("psnr_y", "ssim_y"):
            if key in row:
                score[key] = round(row[key], 6 if key.startswith("ssim") else 4)
        scores.append({k: v for k, v in score.items() if v is not None})
    return scores


def record_scores(name: str, results_files: Sequence, *, manifest_path=None) -> WeightsEntry:
    """Replace a checkpoint's scores with its rows in `magn eval` JSON results files.

    Rows are matched by model name, so evaluate the checkpoint by its manifest name
    (`magn eval --model NAME`)."""
    manifest = load_manifest(manifest_path)
    manifest.get(name)  # MagnError for an unknown name
    scores: List[dict] = []
    for path in results_files:
        path = Path(path)
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MagnError(f"cannot read results {path}: {e}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MagnError(f"{path} is not a `magn eval --output *.json` results file")
        found = scores_from_results(rows, name)
        if not found:
            models = ", ".join(dict.fromkeys(str(r.get("model")) for r in rows)) or "none"
            raise MagnError(f"{path} has no rows for {name} (its models: {models}); "
                            f"evaluate it as `magn eval --model {name}`")
        scores += found
    new_raw = copy.deepcopy(manifest.raw)
    item = next(i for i in new_raw["checkpoints"] if i.get("name") == name)
    item["scores"] = scores
    save_manifest(new_raw, manifest.path)
    return load_manifest(manifest.path).get(name)


# --------------------------------------------------------------------------- file helpers

def _atomic_copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
