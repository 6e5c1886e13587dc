"""The weights manifest: its schema, and reading, validating and writing it.

weights/manifest.json is one human-editable JSON file that lists every published
checkpoint with its sha256 (weights/README.md describes the fields). This module is the
only one that knows the file's shape: it turns the JSON into WeightsEntry / Manifest
objects, refusing any mistake with a MagnError that names the entry, and writes it back
(validated first, atomically). It does no I/O beyond the manifest itself.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from magncli.errors import MagnError
from magncli.fileio import atomic_write_text
from magncli.tasks import TASKS

ENV_MANIFEST = "MAGN_MANIFEST"

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_MANIFEST_KEYS = {"schema", "base_url", "checkpoints", "comment"}
_ENTRY_REQUIRED = {"name", "serves", "arch", "config", "file", "size", "sha256"}
_ENTRY_OPTIONAL = {"urls", "default", "provenance", "scores", "notes", "cpu_defaults"}
# cpu_defaults: how `magn restore` runs the checkpoint on a CPU when the user says nothing,
# as measured (benchmarks/bench_precision.py, bench_inference.py): "precision" (bf16 only
# where the PSNR moves at most 0.02 dB on every set measured; used where the CPU has bf16
# natively), "tile" (the fastest within 0.01 dB), and "measured" (the commands).
_CPU_DEFAULT_KEYS = {"precision", "tile", "measured"}
PROVENANCE_KEYS = {"training_data", "steps", "batch_size", "patch_size", "hardware",
                   "wall_time", "cpu_hours", "sessions", "validation", "planned_steps", "commit",
                   "command", "notes"}
_SCORE_REQUIRED = {"dataset", "psnr", "command"}
_SCORE_OPTIONAL = {"level", "ssim", "psnr_y", "ssim_y", "channels", "n_images", "notes"}


@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint of the manifest (see weights/README.md for the fields)."""
    name: str
    task: str                       # a name of tasks.TASKS
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
    cpu_defaults: dict = field(default_factory=dict)

    @property
    def blind(self) -> bool:
        return self.level_range is not None

    @property
    def level_key(self) -> Optional[str]:
        return TASKS[self.task].level_key

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
            return f"{self.level_key} {format_number(lo)}-{format_number(hi)} (blind)"
        return f"{self.level_key} {', '.join(format_number(v) for v in self.levels)}"

    def headline_score(self) -> Optional[str]:
        """The first listed score, e.g. '30.44 dB Set12 sigma 25', or None."""
        if not self.scores:
            return None
        s = self.scores[0]
        level = (f" {self.level_key} {format_number(s['level'])}"
                 if s.get("level") is not None and self.level_key else "")
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
    package = Path(__file__).resolve().parents[1]                     # magncli/
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
    if base_url is not None and not is_http_url(base_url):
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
                                f"{e.task} model for {describe_channels(e.channels)} images")
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
    if not isinstance(urls, list) or not all(is_http_url(u) for u in urls):
        raise MagnError(f"{label}: urls must be a list of http(s) URLs")
    default = item.get("default", False)
    if not isinstance(default, bool):
        raise MagnError(f"{label}: default must be true or false")
    provenance = item.get("provenance", {})
    if not isinstance(provenance, dict):
        raise MagnError(f"{label}: provenance must be a JSON object")
    _check_keys(provenance, set(), PROVENANCE_KEYS, f"{label} provenance")
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

    cpu_defaults = item.get("cpu_defaults", {})
    if not isinstance(cpu_defaults, dict):
        raise MagnError(f"{label}: cpu_defaults must be a JSON object")
    _check_keys(cpu_defaults, set(), _CPU_DEFAULT_KEYS, f"{label} cpu_defaults")
    if cpu_defaults.get("precision", "fp32") not in ("fp32", "bf16"):
        raise MagnError(f"{label}: cpu_defaults precision must be fp32 or bf16")
    tile = cpu_defaults.get("tile", 64)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16 or tile % 4:
        raise MagnError(f"{label}: cpu_defaults tile must be a multiple of 4, at least 16, not {tile!r}")

    task, channels, levels, level_range = _parse_serves(item["serves"], label)
    return WeightsEntry(name=name, task=task, channels=channels, levels=levels,
                        level_range=level_range, arch=item["arch"], config=dict(item["config"]),
                        file=file, size=size, sha256=sha, urls=tuple(urls), default=default,
                        provenance=dict(provenance), scores=tuple(scores), cpu_defaults=dict(cpu_defaults))


def _parse_serves(serves, label):
    """{"task", "channels", and "<level>": [values] or "<level>_range": [lo, hi]}."""
    where = f"{label} serves"
    if not isinstance(serves, dict):
        raise MagnError(f"{where}: must be a JSON object like {{\"task\": \"denoise\", \"channels\": 1, \"sigma\": [25]}}")
    task = serves.get("task")
    if task not in TASKS:
        raise MagnError(f"{where}: task must be one of {', '.join(TASKS)}, not {task!r}")
    key = TASKS[task].level_key
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


def is_http_url(u) -> bool:
    """Whether `u` is an http(s) URL string (the only kind the manifest lists)."""
    return isinstance(u, str) and u.startswith(("http://", "https://"))


def format_number(v) -> str:
    """25.0 -> '25', 2.5 -> '2.5': a level as people write it."""
    return str(int(v)) if float(v).is_integer() else str(v)


def describe_channels(channels: int) -> str:
    """1 -> 'gray', 3 -> 'color'."""
    return "gray" if channels == 1 else "color"


def save_manifest(raw: dict, path) -> None:
    """Validate then write manifest JSON atomically (temporary file + os.replace)."""
    path = Path(path)
    parse_manifest(raw, path)
    text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)
