"""Where files live and how they are written.

This module owns two things: the location of the project's data directory and atomic file
writes. It does not know about Dagster, MLflow or any file format: callers hand it bytes or a
function that writes a file, and it makes sure that readers only ever see a complete file.

I/O faults (a full disk, a file size limit, permission denied, a read-only or vanished folder)
raise ``StorageFault``: an ``OSError`` whose message is one line naming the path and the cause,
for a full disk with the space free there (and needed, when known).

Atomic write: the content goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the destination with ``os.replace`` (atomic on POSIX). A process
killed half-way leaves the previous file intact; the temporary file is removed on any error
raised in this process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

DATA_DIR_ENV = "GPT_PIPELINE_DATA_DIR"


def process_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux): ``os.umask`` can only be
    read by setting it, a race with any thread creating files; elsewhere it is set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StorageFault(OSError):
    """An I/O failure of the storage itself; ``str()`` is one line: path, cause, free space."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.errno = code

    def __str__(self) -> str:
        return self.args[0]


_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file size limit is reached)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "its folder vanished",
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _errno_of(error: BaseException) -> int | None:
    """The errno of an OSError, or the one named in a pyarrow ("[errno 28] ...") or safetensors
    ("Os { code: 28, ...") message."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    if not isinstance(error, OSError) and type(error).__name__ != "SafetensorError":
        return None  # only I/O errors name an errno: not a message that happens to quote one
    found = re.search(r"\[errno (\d+)\]|\bcode: (\d+)", str(error), re.IGNORECASE)
    return int(found.group(1) or found.group(2)) if found else None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def io_fault(error: BaseException, path: str | os.PathLike | None, needed: int | None = None,
             action: str = "write") -> StorageFault | None:
    """``error`` as a ``StorageFault`` ("cannot write PATH: no space left on device (12 MiB
    needed, 3.0 KiB free on /data)") when it is a storage fault, else None.

    Example:
        >>> print(io_fault(OSError(errno.EROFS, "Read-only file system"), "/data/a.json"))
        cannot write /data/a.json: read-only file system
        >>> io_fault(ValueError("bad value"), "/data/a.json") is None
        True
    """
    if isinstance(error, StorageFault):
        return error
    code = _errno_of(error)
    path = Path(path or getattr(error, "filename", None) or "?")  # the destination, not its temporary file
    missing = Path(getattr(error, "filename", None) or path)
    if code not in _CAUSES or (code == errno.ENOENT and missing.parent.exists()):
        return None  # a missing file whose folder is there is the caller's business, not a fault
    line = f"cannot {action} {path}: {_CAUSES[code]}"
    if code == errno.ENOENT:
        line += f" ({_existing(path.parent)} is all that is left of {path.parent})"
    if code in _FULL:
        where = _existing(path.parent)
        free = shutil.disk_usage(where).free
        line += f" ({_size(needed)} needed, " if needed else " ("
        line += f"{_size(free)} free on {where})"
    return StorageFault(code, line)


@contextlib.contextmanager
def io_faults(path: str | os.PathLike, needed: int | None = None, action: str = "write") -> Iterator[None]:
    """Re-raise a storage fault inside the block as a one-line ``StorageFault`` naming ``path``."""
    try:
        yield
    except Exception as error:
        fault = io_fault(error, path, needed, action)
        if fault is None or fault is error:
            raise
        raise fault from error


def project_root() -> Path:
    """The repository root: the directory that holds the ``gpt_pipeline`` package."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Asset storage: ``$GPT_PIPELINE_DATA_DIR`` when set, else ``<project root>/data``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else project_root() / "data"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], needed: int | None = None) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file, which then replaces it.

    A storage fault raises ``StorageFault`` (``needed``: the bytes it takes, when known); the
    temporary file is removed and the previous file stays.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = atomic_write(d / "a.txt", lambda tmp: tmp.write_text("hi"))
        >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
        ('hi', ['a.txt'])
    """
    path = Path(path)
    with io_faults(path, needed):
        return _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "being written": sweepers in other processes leave it alone
        os.fchmod(fd, 0o666 & ~process_umask())  # mkstemp's 0600 would make every asset private to its writer
        write(tmp)
        os.chmod(tmp, 0o666 & ~process_umask())  # again: some writers (safetensors) replace the file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return path


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that created temporary file ``tmp`` may still be writing it.

    ``atomic_write`` names it ``.<name>.<pid>.<random>.tmp`` and holds an exclusive ``flock`` on it
    until the rename: a file whose pid is gone and whose lock is free belongs to a killed writer.
    """
    try:
        pid = int(tmp.name.rsplit(".", 3)[-3])
    except (ValueError, IndexError):
        return True  # not named by atomic_write: not ours to remove
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        pass
    except PermissionError:
        return True
    try:
        with open(tmp, "rb") as handle:  # a writer in another pid namespace still holds its lock
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return True  # already gone
    return False


def sweep_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers (SIGKILL, power loss) left in ``directory``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".a.txt.999999999.xyz.tmp").write_text("half")  # pid 999999999 does not run
        >>> [p.name for p in sweep_stale_temp_files(d)], list(d.iterdir())
        (['.a.txt.999999999.xyz.tmp'], [])
    """
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if not _writer_alive(tmp):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), needed=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) for the ``with`` block.

    Two processes that work in the same folder (say, two trainings of one configuration) take
    turns instead of interleaving their files. The lock is released when the process ends,
    however it ends.
    """
    directory = Path(directory)
    with io_faults(directory / ".lock"):
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / ".lock", "a+")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished file ``source`` to ``path`` atomically, and return ``path``.

    On the same filesystem this is a rename; across filesystems the file is copied with
    :func:`atomic_write` and then removed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "new.txt").write_text("v2")
        >>> publish(d / "new.txt", d / "out" / "a.txt").read_text(), (d / "new.txt").exists()
        ('v2', False)
    """
    source, path = Path(source), Path(path)
    try:
        with io_faults(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, path)
    except StorageFault:
        raise
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))
        source.unlink()
        return path
    _fsync_dir(path.parent)
    return path


SCRATCH = ".scratch"


def scratch_dir() -> Path:
    """A new private folder for files a stage builds before they are published, on the same
    filesystem as the data directory (so that publishing is a rename).

    Folders of processes that no longer run are removed whenever a new one is made; callers
    remove their own folder when done (``shutil.rmtree``), or leave it for that sweep.
    """
    root = data_dir() / SCRATCH
    with io_faults(root):
        root.mkdir(parents=True, exist_ok=True)
        return _new_scratch(root)


def _new_scratch(root: Path) -> Path:
    for old in root.iterdir():
        try:
            pid = int(old.name.split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.", dir=root))
