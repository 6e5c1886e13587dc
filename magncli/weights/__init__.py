"""Pretrained weights: turn "which weights?" into a verified local checkpoint file.

    entry = select_default("denoise", channels=1, level=25)   # which checkpoint serves this
    path = resolve_weights(None, "denoise", 1, 25)             # ... and where it is on disk
    path = resolve_weights("magn-denoise-gray-s25")            # by manifest name
    path = resolve_weights("/some/file.safetensors")           # an explicit file, as is
    path = resolve_weights("https://host/x.safetensors#sha256=...")  # any URL, cached

One concept per module, each usable without the ones after it:

    manifest   the schema of weights/manifest.json: WeightsEntry, Manifest, load / save
    selection  select_default: which entry serves a task, channel count and level
    cache      the cache folder, offline mode, sha256 verification records
    download   resumable, verified, locked HTTP downloads (knows no manifest)
    resolve    resolve_weights: a path, URL, name or nothing -> a verified local file
    authoring  add_checkpoint and record_scores, for whoever publishes weights

Environment: MAGN_HOME (cache root), MAGN_MANIFEST (another manifest file),
MAGN_WEIGHTS_URL (a mirror's base URL), MAGN_OFFLINE=1 (never touch the network).

The download policy (RETRIES, BACKOFF_S, TIMEOUT_S) is set on magncli.weights.download,
where it is read; it is deliberately not re-exported here, so that setting it on this
package fails instead of silently doing nothing.
"""
from magncli.weights.authoring import (add_checkpoint, levels_from_metadata, parse_levels,
                                       record_scores, scores_from_results)
from magncli.weights.cache import (ENV_HOME, ENV_OFFLINE, VerifyResult, file_sha256, is_offline,
                                   is_verified, verify_local_files, weights_cache_dir)
from magncli.weights.download import download_file
from magncli.weights.manifest import (CHECKPOINT_SUFFIXES, ENV_MANIFEST, Manifest,
                                      WeightsEntry, default_manifest_path, load_manifest,
                                      parse_manifest, save_manifest, unsafe_file_name)
from magncli.weights.resolve import (ENV_MIRROR, candidate_urls, cpu_defaults_for, entry_status,
                                     fetch_checkpoint, local_checkpoint, resolve_weights)
from magncli.weights.selection import select_default

__all__ = [
    # manifest
    "ENV_MANIFEST", "CHECKPOINT_SUFFIXES", "WeightsEntry", "Manifest",
    "default_manifest_path", "load_manifest", "parse_manifest", "save_manifest", "unsafe_file_name",
    # selection
    "select_default",
    # cache
    "ENV_HOME", "ENV_OFFLINE", "weights_cache_dir", "is_offline", "file_sha256", "is_verified",
    "VerifyResult", "verify_local_files",
    # download
    "download_file",
    # resolve
    "ENV_MIRROR", "resolve_weights", "local_checkpoint", "fetch_checkpoint", "candidate_urls",
    "entry_status", "cpu_defaults_for",
    # authoring
    "parse_levels", "levels_from_metadata", "add_checkpoint", "scores_from_results", "record_scores",
]
