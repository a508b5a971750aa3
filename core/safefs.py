"""Files that may have been tampered with: never through a link, only regular files.

A run directory is shared ground: another process, another user or a broken
disk may have put anything there. A `Dir` is opened once without following a
link, and every entry is reached through it, so swapping a path component for
a symlink later leads nowhere. Files are opened with ``O_NOFOLLOW`` and
``O_NONBLOCK`` (a FIFO can neither hang a reader nor a writer), checked to be
regular files, read up to a size limit, and created owner-only (or with the mode
a caller sets on the `Dir`, applied with fchmod: the umask never decides).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from core import faults

FILE_MODE = 0o600
DIR_MODE = 0o700
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


class UnsafeFile(OSError):
    """An entry that is a link, a FIFO, a device or a directory where a file belongs (or the reverse)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a file"
    return "a device or special file"


class Dir:
    """A directory held open; ``path`` is for messages only, never for access."""

    def __init__(self, fd: int, path: Path, file_mode: int = FILE_MODE) -> None:
        self.fd = fd
        self.path = path
        self.file_mode = file_mode  # of the files this Dir creates

    # --- opening -----------------------------------------------------------
    @classmethod
    def open(cls, path: Path, create: bool = False, mode: int = DIR_MODE, follow: bool = False) -> Dir:
        """Open ``path`` as a directory. Its last component must not be a link unless
        ``follow``: a path the user typed may go through links of their own."""
        made = False
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, mode)
                made = True
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC if follow else _DIR_FLAGS
        try:
            opened = cls(os.open(path, flags), path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = _lstat_kind(path)
                if kind == "a file":
                    raise NotADirectoryError(exc.errno, f"{path} is a file, not a directory") from None
                raise UnsafeFile(exc.errno, f"{path} is {kind}, not a directory") from None
            raise
        if made:
            opened.set_mode(mode)
        return opened

    def sub(self, name: str, create: bool = False, mode: int = DIR_MODE) -> Dir:
        made = False
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=self.fd)
                made = True
        try:
            opened = Dir(os.open(name, _DIR_FLAGS, dir_fd=self.fd), self.path / name)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                found = self.lstat(name)
                kind = _describe(found.st_mode) if found else "missing"
                raise UnsafeFile(exc.errno, f"{self.path / name} is {kind}, not a directory") from None
            raise
        if made:
            opened.set_mode(mode)
        return opened

    def set_mode(self, mode: int) -> None:
        """This directory's mode, exactly (mkdir's mode passes through the umask), if it is ours."""
        _set_mode(self.fd, mode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- entries -----------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        """Entry names, sorted; the listing never follows a link."""
        with os.scandir(self.fd) as it:
            return sorted(e.name for e in it)

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """(name, lstat) of every entry that still exists."""
        for name in self.names():
            st = self.lstat(name)
            if st is not None:
                yield name, st

    def unlink(self, name: str) -> None:
        """Remove an entry of this directory (a link is removed, never its target)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    # --- files -------------------------------------------------------------
    def open_file(self, name: str, flags: int, mode: int | None = None) -> int:
        """An fd of a regular file; anything else (a link included) is UnsafeFile. With
        O_CREAT, a file of ours gets ``mode`` (default: this Dir's file mode) exactly."""
        mode = self.file_mode if mode is None else mode
        try:
            fd = os.open(name, flags | _NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                found = self.lstat(name)
                kind = _describe(found.st_mode) if found else "not a regular file"
                raise UnsafeFile(exc.errno, f"{self.path / name} is {kind}, not a regular file") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeFile(errno.EINVAL, f"{self.path / name} is {_describe(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        if flags & os.O_CREAT:
            _set_mode(fd, mode, st)
        return fd

    def read(self, name: str, limit: int, owner: int | None = None) -> bytes | None:
        """The file's bytes (None when it does not exist); UnsafeFile if it is no regular
        file, is larger than ``limit`` or, with ``owner``, belongs to another user."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if owner is not None and st.st_uid != owner:
                raise UnsafeFile(errno.EPERM, f"{self.path / name} belongs to another user")
            if st.st_size > limit:
                raise UnsafeFile(errno.EFBIG, f"{self.path / name} is larger than {limit} bytes")
            chunks, left = [], limit + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > limit:
                raise UnsafeFile(errno.EFBIG, f"{self.path / name} is larger than {limit} bytes")
            return data
        finally:
            os.close(fd)

    def append_fd(self, name: str) -> int:
        """An appending fd of a regular file (readable, to check its last byte), created owner-only."""
        return self.open_file(name, os.O_RDWR | os.O_APPEND | os.O_CREAT)

    def write_atomic(self, name: str, data: bytes | memoryview, durable: bool = True) -> None:
        """Temp file, (fsync,) rename: a crash leaves the old file or the new one, never half.

        A failed write removes its temp file; one left by a kill is named
        ``.<name>.tmp-<pid>`` and removed by `remove_temps`.
        """
        tmp = temp_name(name)
        self.unlink(tmp)  # a leftover of an earlier process with this pid, or a planted link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, self.file_mode, dir_fd=self.fd)
        try:
            try:
                _set_mode(fd, self.file_mode)
                write_all(fd, data)
                faults.hit(f"write:{name}")
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            faults.hit(f"rename:{name}")
            self.rename(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise
        if durable:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)  # the rename itself survives a power cut

    def link_atomic(self, source: str, name: str) -> None:
        """``name`` becomes another name of the file ``source`` (a hard link, swapped in by
        rename, as `write_atomic` swaps in a copy); OSError where hard links are refused."""
        tmp = temp_name(name)
        self.unlink(tmp)
        os.link(source, tmp, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        try:
            faults.hit(f"write:{name}")
            faults.hit(f"rename:{name}")
            self.rename(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def remove_temps(self) -> list[str]:
        """Remove the temp files of interrupted atomic writes; returns their names."""
        removed = []
        for name, st in self.entries():
            if is_temp_name(name) and stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                self.unlink(name)
                removed.append(name)
        return removed


def temp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}"


def is_temp_name(name: str) -> bool:
    head, sep, pid = name.rpartition(".tmp-")
    return bool(sep) and head.startswith(".") and pid.isdigit()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _set_mode(fd: int, mode: int, st: os.stat_result | None = None) -> None:
    st = st or os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        mode |= st.st_mode & stat.S_ISGID  # inherited from a shared parent: new entries keep its group
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) == mode:
        return
    os.fchmod(fd, mode)  # a set-group-ID bit the kernel refuses (not the group's member) is just dropped


def _lstat_kind(path: Path) -> str:
    try:
        return _describe(os.lstat(path).st_mode)
    except OSError:
        return "unreadable"


# --- room kept in reserve past a file's end ------------------------------------------

_KEEP_SIZE, _PUNCH_HOLE = 0x01, 0x02  # fallocate(2) flags (Linux)


def _fallocate() -> Callable[..., int] | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)

    def run(fd: int, flags: int, offset: int, length: int) -> int:
        return 0 if call(fd, flags, offset, length) == 0 else ctypes.get_errno()

    return run


def reserve(fd: int, length: int) -> bool:
    """Keep ``length`` bytes of disk past the end of the file ``fd`` (its size unchanged),
    so that appends up to that much cannot meet a full disk. False where the file
    system cannot (the appends then take their chances); OSError(ENOSPC) when there is no room."""
    call = _fallocate()
    if call is None:
        return False
    err = call(fd, _KEEP_SIZE, os.fstat(fd).st_size, length)
    if err in (errno.ENOSPC, errno.EDQUOT):
        raise OSError(err, os.strerror(err))
    return err == 0


def release(fd: int, length: int) -> None:
    """Give back what `reserve` kept past the file's end (best effort)."""
    call = _fallocate()
    if call is not None:
        call(fd, _KEEP_SIZE | _PUNCH_HOLE, os.fstat(fd).st_size, length)
