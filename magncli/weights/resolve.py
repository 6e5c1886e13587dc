"""Resolution: turn "which weights?" (a path, a URL, a manifest name or nothing) into a
verified local checkpoint file.

A manifest checkpoint is looked for, in order: in the cache, next to the manifest
(checkpoints shipped in the repository), then downloaded from MAGN_WEIGHTS_URL + file
name, the entry's URLs and the manifest's base_url. This is the one module that ties the
manifest, default selection, the cache and downloads together.

Environment: MAGN_WEIGHTS_URL (a mirror's base URL), and MAGN_HOME, MAGN_OFFLINE,
MAGN_MANIFEST as the other modules read them.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union
from urllib.parse import quote, unquote, urldefrag, urlsplit

from magncli.errors import MagnError
from magncli.weights.cache import is_offline, is_verified, weights_cache_dir
from magncli.weights.download import download_file, say
from magncli.weights.manifest import (CHECKPOINT_SUFFIXES, Manifest, WeightsEntry, is_http_url,
                                      load_manifest, unsafe_file_name)
from magncli.weights.selection import select_default

ENV_MIRROR = "MAGN_WEIGHTS_URL"


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
        if is_http_url(spec):
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
            say(f"{where} file {path} does not match its sha256; not using it", quiet)
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
                say(f"{e}; trying the next URL", quiet)
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
        say(f"no sha256 given for {plain_url}: the download is checked only by its size and HTTP "
             "status (append #sha256=<hex> to the URL to verify it)", quiet)
    return download_file(plain_url, target, sha256=sha256, quiet=quiet, cache_dir=cache_dir)


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


def cpu_defaults_for(path: Union[str, os.PathLike]) -> dict:
    """The measured CPU defaults (precision, tile) of the manifest entry that publishes
    this very file (its name, size and sha256), or {} for any other file: a user's own
    checkpoint, or an older copy of a published name, runs with the engine's defaults."""
    from magncli.weights.cache import file_sha256
    from magncli.weights.manifest import load_manifest
    path = Path(path)
    try:
        manifest = load_manifest()
        size = path.stat().st_size
    except (MagnError, OSError):
        return {}
    for entry in manifest.entries:
        if entry.cpu_defaults and entry.file == path.name and entry.size == size and file_sha256(path) == entry.sha256:
            return entry.cpu_defaults
    return {}
