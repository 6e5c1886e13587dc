"""Atomic file writes, output claims and the clean-up of what a killed run left behind:
the one way magn puts a file in place.

    with atomic_path("out.png") as tmp:   # a temporary name in the same folder
        write_something(tmp)
    # now out.png exists, complete, with the usual permissions; on any error nothing
    # is left under either name

    with claim_output("out.png"):         # before the work: refuses an existing out.png,
        ...                               # and one that another live process is making
        atomic_write_bytes("out.png", data, exclusive=True)

    remove_stale_temporaries(["out.png"])  # temporaries of out.png whose writer is gone

A reader never sees half a file, and an interrupted run never leaves a truncated
output under the final name. Temporary files are made with mkstemp (mode 0600), so the
usual umask-derived mode (0644 typically) is applied before the rename.

Temporary names say who wrote them: `.NAME.PID@HOST.XXXXXXXX.part`. A `kill -9` can
leave one behind; it is stale once its process is gone (same host), and
`remove_stale_temporaries` deletes it then, never while its writer lives.

A claim is `.NAME.magn-lock`, held with flock(2) for as long as the work runs: the kernel
releases it when the process ends, however it ends, so a killed run never blocks a rerun.
The file is removed when the claim is released (and by the next run after a kill).

A file-system error (read-only, full, no permission) is a one-line MagnError.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import socket
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

from magncli.errors import MagnError

try:
    import fcntl
except ImportError:               # not POSIX: claims reduce to the existence checks
    fcntl = None

PathLike = Union[str, os.PathLike]

LOCK_SUFFIX = ".magn-lock"
# Temporaries of another host, or of a magn older than the PID@HOST names, are judged
# by age alone: no write of one file takes this long.
FOREIGN_STALE_SECONDS = 24 * 3600
UNTAGGED_STALE_SECONDS = 3600
_MAX_NAME_BYTES = 150             # of NAME in a temporary's name (file names stop at 255)


class OutputExists(MagnError):
    """The output name is taken by a file (and overwriting was not asked for)."""


def home_as_tilde(text: str) -> str:
    """`text` (a recorded command line) with the home folder as "~": published files
    (results, model cards, checkpoint provenance) name no path of this machine."""
    return text.replace(str(Path.home()).rstrip("/") + "/", "~/")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _owner() -> str:
    """PID@HOST: who writes a temporary file or holds a claim."""
    return f"{os.getpid()}@{_host()}"


def _short_name(name: str) -> str:
    """`name` cut to _MAX_NAME_BYTES (UTF-8), so that a temporary's name stays legal."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_NAME_BYTES:
        return name
    return raw[:_MAX_NAME_BYTES].decode("utf-8", "ignore")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True               # no safe liveness test here: treat as alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # another user's process
        return True
    return True


def _cannot_write(path: Path, e: OSError) -> MagnError:
    return MagnError(f"{path}: cannot write ({e.strerror or e})")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _make_parents(folder: Path) -> List[Path]:
    """mkdir -p; returns the folders it made, deepest first (to undo on failure)."""
    made = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(folders: Iterable[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _publish(tmp: Path, path: Path, exclusive: bool) -> None:
    """Move `tmp` to `path`; with `exclusive`, never over a file that exists."""
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)         # atomic, and fails if `path` exists
    except FileExistsError:
        raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # A file system without hard links: the claim keeps other magn runs away.
        if path.exists():
            raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def atomic_path(path: PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it to `path` if the block succeeds.

    exclusive: never replace an existing `path` (MagnError "already exists" instead),
    even one that another process wrote while the block ran."""
    path = Path(path)
    try:
        made = _make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{_short_name(path.name)}.{_owner()}.", suffix=".part",
                                   dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        _publish(Path(tmp), path, exclusive)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _remove_empty(made)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *, exclusive: bool = False) -> None:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path, exclusive=exclusive) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str, *, exclusive: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), exclusive=exclusive)


def check_writable(path: Union[str, Path], overwrite: bool = False) -> Path:
    """MagnError if `path` exists and overwriting was not asked for (check before long work)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)")
    return path


def write_file_atomic(path: Union[str, Path], data: Union[bytes, str],
                      overwrite: bool = False) -> Path:
    """Write through a temporary file and os.replace, so that a reader never sees half a
    file; refuses to replace an existing file unless `overwrite`."""
    path = check_writable(path, overwrite)
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data, exclusive=not overwrite)
    return path


# --------------------------------------------------------------------------- claims
def lock_path(path: PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{_short_name(path.name)}{LOCK_SUFFIX}")


def open_own_file(path: Path, flags: int, what: str, then: str) -> int:
    """os.open of the regular file `path` itself (made if O_CREAT), never what a name
    planted in its place points to: through a symbolic link we would empty or overwrite
    its target (a claim's PID, a download's bytes), and a FIFO would block. MagnError
    "PATH: is a symbolic link, not WHAT; THEN" (likewise for anything not a regular file)."""
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MagnError(f"{path}: is a symbolic link, not {what}; {then}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):        # a FIFO or device planted there
        os.close(fd)
        raise MagnError(f"{path}: is not a regular file, not {what}; {then}")
    return fd


def _open_lock(lock: Path) -> int:
    """Open (or make) the claim file itself (open_own_file)."""
    return open_own_file(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), "a magn claim", "remove it")


def _try_lock(lock: Path) -> Optional[int]:
    """An fd holding `lock` (flock, exclusive), or None when a live process holds it."""
    while True:
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        # The holder before us removes the file before it unlocks: if the name now
        # points elsewhere (or nowhere), we locked a removed file; start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _lock_owner(lock: Path) -> str:
    try:
        owner = lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        owner = ""
    return f"pid {owner.replace('@', ' on ')}" if owner else "another process"


@contextmanager
def claim_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Claim the output name `path` before working on it.

    MagnError, before any work, if `path` exists (unless `overwrite`), if another live
    process holds the claim, or if the folder cannot be written. The claim ends with
    the block, or with the process however it ends."""
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)")
    try:
        made = _make_parents(path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    if fcntl is None:
        try:
            yield path
        except BaseException:
            _remove_empty(made)
            raise
        return
    lock = lock_path(path)
    # Ctrl-C or SIGTERM between making the lock file and the block that removes it would
    # leave it behind: they are held back until that block is entered, then raise in it.
    held_back = _hold_back_stop_signals()
    fd = None
    try:
        for attempt in range(3):
            try:
                fd = _try_lock(lock)
                break
            except FileNotFoundError as e:
                # A claim in the same new folder that failed (another thread of `restore
                # --jobs`, or another process) removed the folder it had made, between our
                # mkdir and our lock: make it again.
                if attempt == 2:
                    raise _cannot_write(path, e) from None
                try:
                    made = _make_parents(path.parent)
                except OSError as e2:
                    raise _cannot_write(path, e2) from None
            except OSError as e:
                raise _cannot_write(path, e) from None
        if fd is None:
            raise MagnError(f"{path}: being written by another magn process ({_lock_owner(lock)})")
        _let_stop_signals_through(held_back)
        held_back = None
        os.ftruncate(fd, 0)
        os.write(fd, _owner().encode())
        if not overwrite and path.exists():   # finished by another process meanwhile
            raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)")
        yield path
    except BaseException:
        if fd is not None:
            _release(lock, fd)
        _remove_empty(made)
        raise
    finally:
        _let_stop_signals_through(held_back)
    _release(lock, fd)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _hold_back_stop_signals() -> Optional[dict]:
    """Hold Ctrl-C and SIGTERM back: their handlers are swapped for one that notes them.
    Returns what _let_stop_signals_through needs, or None off the main thread (Python
    runs signal handlers, and so raises their exceptions, in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    held = {"came": [], "handlers": {}}
    for signum in _STOP_SIGNALS:
        held["handlers"][signum] = signal.signal(signum, lambda n, frame: held["came"].append((n, frame)))
    return held


def _let_stop_signals_through(held: Optional[dict]) -> None:
    """Put the handlers back, and run the first for a signal that came meanwhile (Ctrl-C:
    KeyboardInterrupt), so that it raises here."""
    if held is None:
        return
    for signum, handler in held["handlers"].items():
        signal.signal(signum, handler)
    if held["came"]:
        signum, frame = held["came"][0]
        held["came"].clear()                  # a second call (the finally) runs nothing
        handler = held["handlers"][signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


def hold_claim(path: PathLike) -> Optional[int]:
    """claim_output's claim of `path` (a folder too) for work that outlives one block, such
    as a training run: the fd to pass to `drop_claim`. MagnError if another live process
    holds it. None where there is no flock (not POSIX)."""
    path = Path(path)
    if fcntl is None:
        return None
    try:
        _make_parents(path.parent)
        fd = _try_lock(lock_path(path))
    except OSError as e:
        raise _cannot_write(path, e) from None
    if fd is None:
        raise MagnError(f"{path}: in use by another magn process ({_lock_owner(lock_path(path))})")
    os.ftruncate(fd, 0)
    os.write(fd, _owner().encode())
    return fd


def drop_claim(path: PathLike, fd: Optional[int]) -> None:
    if fd is not None:
        _release(lock_path(path), fd)


def _release(lock: Path, fd: int) -> None:
    try:
        lock.unlink(missing_ok=True)      # before unlocking: see _try_lock
    except OSError:
        pass
    os.close(fd)


# --------------------------------------------------------------------------- clean-up
_TAGGED = re.compile(r"\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]{8}\.part$")
_UNTAGGED = re.compile(r"\.[A-Za-z0-9_]{8}\.part$")     # mkstemp names of older magn versions


def _stale(entry: Path, rest: str, now: float) -> bool:
    """Is `entry` (a temporary whose name after `.NAME` is `rest`) left by a dead writer?"""
    try:
        age = now - entry.stat().st_mtime
    except OSError:
        return False
    tagged = _TAGGED.fullmatch(rest)
    if tagged:
        if tagged["host"] == _host():
            return not _pid_alive(int(tagged["pid"]))
        return age > FOREIGN_STALE_SECONDS
    return bool(_UNTAGGED.fullmatch(rest)) and age > UNTAGGED_STALE_SECONDS


def remove_stale_temporaries(paths: Iterable[PathLike]) -> List[Path]:
    """Delete what killed magn runs left for the output names `paths`: temporaries
    (`.NAME.*.part`) whose writer is gone, and claims (`.NAME.magn-lock`) that no
    process holds. Returns the temporaries removed. Files of live processes, and files
    that are not this tool's temporaries of these names, are never touched."""
    by_folder = {}
    for p in map(Path, paths):
        by_folder.setdefault(p.parent, set()).add(_short_name(p.name))
    removed, now = [], time.time()
    for folder, names in by_folder.items():
        try:
            entries = [e for e in os.listdir(folder) if e.startswith(".")]
        except OSError:
            continue
        for entry in entries:
            if fcntl is not None and entry.endswith(LOCK_SUFFIX) and entry[1:-len(LOCK_SUFFIX)] in names:
                _remove_unheld_lock(folder / entry)
                continue
            if not entry.endswith(".part"):
                continue
            for name in names:
                prefix = f".{name}"
                if entry.startswith(prefix) and _stale(folder / entry, entry[len(prefix):], now):
                    try:
                        (folder / entry).unlink()
                        removed.append(folder / entry)
                    except OSError:
                        pass
                    break
    return removed


def _remove_unheld_lock(lock: Path) -> None:
    try:
        fd = _try_lock(lock)
    except (OSError, MagnError):    # not ours to remove (a planted link): the claim says so
        return
    if fd is not None:
        _release(lock, fd)
