"""Atomic writes, output claims and the clean-up after killed runs (issue #19, items 7-9)."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

from pathlib import Path

import pytest

from magncli import fileio
from magncli.errors import MagnError
from magncli.fileio import atomic_write_bytes, claim_output, lock_path, remove_stale_temporaries

HOST = fileio._host()
REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _python(code: str, **kw):
    """Run `code` in a fresh interpreter that imports this checkout's magncli."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kw)


def _killed_while_writing(path) -> None:
    """A process that is kill -9'd while it holds the claim of `path` and has half
    written its temporary file, as a killed `magn restore` leaves them."""
    proc = _python(f"""
        import os, signal
        from magncli.fileio import atomic_path, claim_output
        with claim_output({str(path)!r}):
            with atomic_path({str(path)!r}) as tmp:
                open(tmp, "wb").write(b"x" * 32768)
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_temporaries_name_their_writer(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
    atomic_write_bytes(tmp_path / "out.png", b"data")
    (name,) = seen
    assert name.startswith(f".out.png.{os.getpid()}@{HOST}.") and name.endswith(".part")


def test_a_killed_writer_leaves_files_that_the_next_run_removes(tmp_path):
    out = tmp_path / "01_magn.png"
    _killed_while_writing(out)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[0].startswith(".01_magn.png.") and left[0].endswith(".part")
    assert left[1] == ".01_magn.png.magn-lock"
    part = tmp_path / left[0]
    assert part.stat().st_size == 32768
    # The claim died with its process: a rerun is not blocked, and cleans up.
    assert remove_stale_temporaries([out]) == [part]
    assert list(tmp_path.iterdir()) == []
    with claim_output(out):
        atomic_write_bytes(out, b"ok", exclusive=True)
    assert [p.name for p in tmp_path.iterdir()] == ["01_magn.png"]


def test_only_stale_temporaries_of_the_named_outputs_are_removed(tmp_path):
    old = time.time() - 2 * 3600
    files = {
        f".a.png.{_dead_pid()}@{HOST}.abcdefgh.part": True,        # writer gone
        f".a.png.{os.getpid()}@{HOST}.abcdefgh.part": False,       # writer alive (us)
        ".a.png.qwertyui.part": True,                              # older magn, 2 h old
        ".a.png.zxcvbnmm.part": False,                             # older magn, fresh
        f".a.png.{_dead_pid()}@another-host.abcdefgh.part": False,  # other host, fresh
        f".b.png.{_dead_pid()}@{HOST}.abcdefgh.part": False,        # not an output named
        ".a.png.partial": False,                                   # not a temporary
        "a.png.abcdefgh.part": False,                              # not hidden: not ours
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x")
        if name in (".a.png.qwertyui.part", ".a.png.partial"):
            os.utime(tmp_path / name, (old, old))
    removed = {p.name for p in remove_stale_temporaries([tmp_path / "a.png"])}
    assert removed == {name for name, stale in files.items() if stale}
    assert {p.name for p in tmp_path.iterdir()} == {name for name, stale in files.items() if not stale}


def test_a_live_claim_is_refused_before_any_work(tmp_path):
    out = tmp_path / "01_magn.png"
    holder = _python(f"""
        import sys, time
        from magncli.fileio import claim_output
        with claim_output({str(out)!r}):
            print("held", flush=True)
            time.sleep(120)
    """, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MagnError, match=rf"being written by another magn process \(pid {holder.pid} on "):
            with claim_output(out):
                pytest.fail("the work ran")
        remove_stale_temporaries([out])            # a held claim is never removed
        assert lock_path(out).exists()
    finally:
        holder.kill()
        holder.wait()
    with claim_output(out):                        # its process is gone: free again
        pass
    assert not lock_path(out).exists()


def test_existing_output_is_refused_before_the_claim_and_after_it(tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep")
    with pytest.raises(MagnError, match="already exists"):
        with claim_output(out):
            pytest.fail("the work ran")
    with claim_output(out, overwrite=True):
        atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["o.png"]


def test_an_exclusive_write_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "o.png"
    with claim_output(out):
        out.write_bytes(b"another writer's")         # e.g. a process not using claims
        with pytest.raises(MagnError, match="already exists"):
            atomic_write_bytes(out, b"mine", exclusive=True)
    assert out.read_bytes() == b"another writer's" and os.listdir(tmp_path) == ["o.png"]


def test_a_folder_made_for_a_failed_output_is_removed(tmp_path):
    out = tmp_path / "new" / "sub" / "o.png"
    with pytest.raises(RuntimeError):
        with claim_output(out):
            raise RuntimeError("the work failed")
    assert os.listdir(tmp_path) == []


def _read_only(monkeypatch, folder):
    """Make writes under `folder` fail as on a read-only file system."""
    real_open, real_mkstemp = os.open, fileio.tempfile.mkstemp

    def fail(path):
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "open", lambda path, *a, **k: fail(path) or real_open(path, *a, **k))
    monkeypatch.setattr(fileio.tempfile, "mkstemp",
                        lambda *a, dir=None, **k: fail(dir) or real_mkstemp(*a, dir=dir, **k))


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    _read_only(monkeypatch, tmp_path)
    for call in (lambda: atomic_write_bytes(tmp_path / "o.png", b"x"),
                 lambda: claim_output(tmp_path / "o.png").__enter__()):
        with pytest.raises(MagnError) as e:
            call()
        assert str(e.value) == f"{tmp_path / 'o.png'}: cannot write (Read-only file system)"


def test_a_claim_survives_its_folder_being_removed_by_a_failed_claim(tmp_path, monkeypatch):
    # Thread A made out/sub for its output and failed (its image was bad), removing the
    # folder, between thread B's mkdir and B's lock: B makes the folder again.
    from magncli import fileio
    real, calls = fileio._try_lock, []

    def folder_gone_once(lock):
        calls.append(lock)
        if len(calls) == 1:
            os.rmdir(lock.parent)
        return real(lock)

    monkeypatch.setattr(fileio, "_try_lock", folder_gone_once)
    target = tmp_path / "out" / "sub" / "a.png"
    with fileio.claim_output(target):
        fileio.atomic_write_bytes(target, b"data", exclusive=True)
    assert target.read_bytes() == b"data" and len(calls) == 2
    assert os.listdir(target.parent) == ["a.png"]


def test_a_link_planted_as_the_claim_is_refused_and_its_target_untouched(tmp_path):
    """Issue #37: the claim was opened through a symbolic link, emptying its target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "01_magn.png"
    out.parent.mkdir()
    lock_path(out).symlink_to(victim)
    remove_stale_temporaries([out])
    with pytest.raises(MagnError, match="symbolic link"):
        with claim_output(out):
            pytest.fail("the work ran")
    assert victim.read_text() == "precious" and lock_path(out).is_symlink()


def test_a_fifo_planted_as_the_claim_is_refused(tmp_path):
    out = tmp_path / "01_magn.png"
    os.mkfifo(lock_path(out))
    with pytest.raises(MagnError, match="not a regular file"):
        with claim_output(out):
            pytest.fail("the work ran")


def test_ctrl_c_while_a_claim_is_taken_leaves_no_lock_file(tmp_path, monkeypatch):
    """A Ctrl-C that lands between making the lock file and the block that removes it
    (the stopped-restore test hit it now and then) is held back and raised inside it."""
    import os
    import signal
    from magncli import fileio
    if fileio.fcntl is None:
        pytest.skip("no flock here: claims make no lock file")
    real = fileio._try_lock

    def interrupted(lock):
        fd = real(lock)
        os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C, as the lock is just taken
        return fd
    monkeypatch.setattr(fileio, "_try_lock", interrupted)
    target = tmp_path / "out" / "a.png"
    with pytest.raises(KeyboardInterrupt):
        with fileio.claim_output(target):
            pass
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # the handler is back
