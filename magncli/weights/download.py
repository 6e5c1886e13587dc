"""Resumable, verified, atomic HTTP downloads shared safely between processes.

The pooch / torch.hub pattern: stream into `<file>.part` (resumed with an HTTP Range
request after an interruption), retry connection errors, timeouts and 5xx with backoff,
check size and sha256, then rename atomically, all under a file lock so that concurrent
processes share one download. A rich progress bar shows on stderr when it is a terminal.
Knows nothing of the manifest: it is given a URL, a target and what to expect.
"""
from __future__ import annotations

import os
import re
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from magncli.errors import MagnError
from magncli.fileio import open_own_file
from magncli.version import __version__
from magncli.weights import cache

# Download policy, read at call time: tests (and, if ever needed, callers) shorten it by
# setting these names on this module.
RETRIES = 3                 # extra attempts after the first, for connection errors, timeouts, 5xx
BACKOFF_S = 1.0             # wait before retry k is BACKOFF_S * 2**(k-1)
TIMEOUT_S = (10.0, 60.0)    # (connect, read) seconds, as requests takes them
CHUNK_BYTES = 1 << 20
# A server that drips a byte every few seconds never trips the read timeout: less than
# STALL_MIN_BYTES in STALL_S seconds counts as a stalled attempt (retried, then an error).
STALL_S = 60.0
STALL_MIN_BYTES = 16 << 10
PROGRESS_EVERY_S = 30.0     # without a terminal, a line of progress at most this often


class _Retryable(Exception):
    """A failure worth another attempt (5xx, a cut connection)."""


class _RestartFromZero(_Retryable):
    """The partial file does not fit what the server sends; it was deleted."""


def say(message: str, quiet: bool) -> None:
    """A note for the user on stderr (retries, waits, mismatches), unless quiet."""
    if not quiet:
        print(f"magn: {message}", file=sys.stderr)


@contextmanager
def _progress_bar(description: str, total: Optional[int], done: int, quiet: bool) -> Iterator:
    """Yields advance(n_bytes). A rich bar on stderr, only when stderr is a terminal."""
    from rich.console import Console
    console = Console(stderr=True)
    if quiet:
        yield lambda n: None
        return
    if not console.is_terminal:      # a log: a slow download still says it is alive
        yield _progress_lines(description, total, done)
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _progress_lines(description: str, total: Optional[int], done: int):
    """advance(n_bytes) that says how far the download is, every PROGRESS_EVERY_S."""
    state = {"done": done, "said": time.monotonic()}

    def advance(n: int) -> None:
        state["done"] += n
        if time.monotonic() - state["said"] >= PROGRESS_EVERY_S:
            state["said"] = time.monotonic()
            of = f" of {total / 1e6:.1f}" if total else ""
            say(f"downloading {description}: {state['done'] / 1e6:.1f}{of} MB", False)
    return advance


@contextmanager
def _locked(target: Path, quiet: bool) -> Iterator[None]:
    """Hold `<target>.lock`, so that one process downloads while the others wait."""
    from filelock import FileLock, Timeout
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        say(f"waiting for another magn process to finish downloading {target.name}", quiet)
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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target, quiet):
            return _download_locked(url, target, sha256=sha256, size=size, quiet=quiet, cache_dir=cache_dir)
    except OSError as e:  # an unwritable cache (mkdir, the lock, the rename)
        raise MagnError(f"cannot write to the weights cache {target.parent}: {e.strerror or e} "
                        "(set MAGN_HOME to a writable folder)") from None


def _download_locked(url: str, target: Path, *, sha256: Optional[str], size: Optional[int],
                     quiet: bool, cache_dir: Path) -> Path:
    part = target.with_name(target.name + ".part")
    if target.is_file():
        if sha256 is None or cache.is_verified(target, sha256, cache_dir):
            return target
        target.unlink()  # a corrupt copy: replace it
    _fetch_to_part(url, part, sha256=sha256, size=size, quiet=quiet)

    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise MagnError(f"download of {url} has {actual_size} bytes, expected {size}; deleted it")
    if sha256 is not None:
        actual = cache.file_sha256(part)
        if actual != sha256:
            part.unlink(missing_ok=True)
            raise MagnError(f"download of {url} has sha256 {actual}, expected {sha256}; deleted it "
                            "(a wrong or corrupted file on the server?)")
    if not _is_plain_file(part):  # swapped for a link while we checked it
        raise MagnError(f"{part}: replaced by something that is not a plain file; not used")
    os.replace(part, target)  # atomic: the final name only ever holds a complete file
    if sha256 is not None:
        cache.record_verified(target, sha256, cache_dir)
    return target


def _fetch_to_part(url: str, part: Path, *, sha256: Optional[str], size: Optional[int], quiet: bool) -> None:
    """Fill `part` with the whole body of `url`, resuming what an earlier attempt left."""
    import requests
    import urllib3

    # trust_env stays True: requests then honours HTTP(S)_PROXY, NO_PROXY and .netrc.
    session = requests.Session()
    # identity: byte offsets for Range must refer to the file, not to a gzip stream.
    base_headers = {"User-Agent": f"magn/{__version__}", "Accept-Encoding": "identity"}
    failures = 0
    restarted = False  # one free restart from zero when the partial file proves stale
    try:
        while True:
            _drop_foreign_part(part, quiet)
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset >= size:
                # A leftover as long as the file: it may be complete (crash before the rename).
                if offset == size and (sha256 is None or cache.file_sha256(part) == sha256):
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
                    say(f"{reason}: restarting the download of {url}", quiet)
                    continue
                failures += 1
                if failures > RETRIES:
                    kept = (f"; {part.stat().st_size} bytes kept in {part}, the next try resumes"
                            if part.exists() else "")
                    raise MagnError(f"download of {url} failed after {failures} attempts: {reason}{kept}") from None
                wait = BACKOFF_S * 2 ** (failures - 1)
                say(f"download of {url} interrupted ({reason}); retrying in {wait:g} s", quiet)
                time.sleep(wait)
            except requests.RequestException as e:  # bad URL, too many redirects, ...: no retry
                raise MagnError(f"cannot download {url}: {_short_reason(e)}") from None
            except OSError as e:
                raise MagnError(f"cannot write {part}: {e.strerror or e}") from None
    finally:
        session.close()


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _drop_foreign_part(part: Path, quiet: bool) -> None:
    """A `.part` that is a symbolic link (or anything but a plain file) is not ours to
    resume: writing through it would overwrite a file outside the cache."""
    if os.path.lexists(part) and not _is_plain_file(part):
        say(f"{part} is not a plain file; removed it and starting afresh", quiet)
        try:
            os.unlink(part)
        except IsADirectoryError:
            raise MagnError(f"{part}: is a folder, not a partial download; remove it") from None


def _open_part(part: Path, append: bool):
    """The `.part` file itself for writing, never the target of a link planted there."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = open_own_file(part, flags, "a partial download", "not written")
    return os.fdopen(fd, "ab" if append else "wb")


class _Stall:
    """Counts bytes per STALL_S window; a window with too few is a stalled server."""

    def __init__(self):
        self.start, self.bytes = time.monotonic(), 0

    def check(self, n: int, written: int) -> None:
        self.bytes += n
        now = time.monotonic()
        if now - self.start < STALL_S:
            return
        if self.bytes < STALL_MIN_BYTES:
            raise _Retryable(f"stalled: {self.bytes} bytes in {now - self.start:.0f} s, "
                             f"{written} bytes so far")
        self.start, self.bytes = now, 0


def _too_long(url: str, part: Path, size: int, got: int) -> MagnError:
    part.unlink(missing_ok=True)
    return MagnError(f"download of {url} sends more than the declared size ({got} bytes, expected {size}); "
                     "cut off and deleted it")


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
    if size is not None and expected_total is not None and expected_total > size:
        raise _too_long(url, part, size, expected_total)   # said in the headers: read nothing

    # read1 (urllib3 >= 2) hands over whatever has arrived, so when the connection drops,
    # every byte received is already in the .part file for the next Range request.
    # (iter_content would lose the last partial chunk.)
    read = getattr(resp.raw, "read1", None) or resp.raw.read
    written = offset
    stall = _Stall()
    with _open_part(part, append=bool(offset)) as out, \
            _progress_bar(part.name[:-len(".part")], expected_total, offset, quiet) as advance:
        while True:
            chunk = read(CHUNK_BYTES, decode_content=encoded)
            if not chunk:
                break
            if size is not None and written + len(chunk) > size:   # never past the manifest's size
                out.close()
                raise _too_long(url, part, size, written + len(chunk))
            out.write(chunk)
            written += len(chunk)
            advance(len(chunk))
            stall.check(len(chunk), written)
    if expected_total is not None and written < expected_total:
        raise _Retryable(f"connection closed after {written} of {expected_total} bytes")


def _content_range_start(header: str) -> Optional[int]:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header)
    return int(m.group(1)) if m else None


def _short_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
