"""Atomic file writes: a reader never sees a truncated file under a final name.

Every writer here produces the file under a hidden temporary name in the *same* folder (so the final
:func:`os.replace` is a rename within one file system, which POSIX and Windows make atomic), flushes it
to disk, and only then renames it. On any failure, including ``KeyboardInterrupt``, the temporary file
is removed and the exception propagates; a file that already existed under the final name is left
untouched.

Temporary names look like ``.<final name>.<8 random chars>.tmp<suffix>``: they keep the final suffix because
several writers (OpenCV, trimesh) choose the format from the extension. A process killed mid-write (SIGKILL,
power loss) cannot remove its temporary file; :func:`remove_temp_files` deletes such leftovers and
:func:`easi3r.export.save.save_reconstruction` calls it on every folder it writes into.

Permissions: the temporary file is created with mode ``0o666`` filtered by the process umask, exactly like a
plain ``open(path, "w")`` (``tempfile.mkstemp`` would make every export ``0o600``, unreadable to the group).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "TEMP_MARKER",
    "atomic_path",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temp_name",
    "remove_temp_files",
]

TEMP_MARKER = ".tmp"
_RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM_LEN = 8
# ``.<final name>.<8 random chars>.tmp<final suffix>``: the exact shape :func:`atomic_path` creates.
_TEMP_RE = re.compile(rf"^\..+\.[{_RANDOM_CHARS}]{{{_RANDOM_LEN}}}{re.escape(TEMP_MARKER)}(\.[^.]*)?$")


def is_temp_name(name: str | os.PathLike[str]) -> bool:
    """True for a file name produced by :func:`atomic_path` (leftovers after a crash can be deleted).

    Example:
        >>> is_temp_name(".scene.glb.k2j9x_0a.tmp.glb"), is_temp_name("scene.glb"), is_temp_name(".hidden.tmp")
        (True, False, False)
    """
    return _TEMP_RE.match(Path(name).name) is not None


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` (not recursive) when a writer was killed.

    Only regular files whose names match :func:`is_temp_name` are removed; a missing folder is fine.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_temp_name(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _create_temp(final: Path) -> Path:
    """Create an empty, new temporary file next to ``final`` with mode ``0o666 & ~umask``."""
    for _ in range(100):
        token = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(_RANDOM_LEN))
        tmp = final.parent / f".{final.name}.{token}{TEMP_MARKER}{final.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {final}")


def _fsync_file(path: Path) -> None:
    # Without the fsync a crash right after the rename can leave an empty file under the final name on
    # file systems with delayed allocation; the rename is atomic, the data is not.
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    Use it for writers that insist on a file name (``cv2.VideoWriter``, ``write_tum``)::

        with atomic_path(out / "video.mp4") as tmp:
            write_video(tmp)

    Args:
        path: final file name. Its parent folder is created if missing.
        fsync: flush the file's data to disk before the rename.

    Yields:
        A path in the same folder with the same suffix. The block must leave a regular file there.

    Raises:
        FileNotFoundError: the block finished without creating the temporary file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic write of {final} produced no file at {tmp}")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically. Returns the final path."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends on every platform) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save_npz(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray] | None = None,
    /,
    *,
    compressed: bool = False,
    fsync: bool = True,
    **named: np.ndarray,
) -> Path:
    """``np.savez`` / ``np.savez_compressed`` of ``arrays`` and ``named`` (name -> array) to ``path``, atomically.

    The file is written through an open handle, so numpy does not append a second ``.npz`` suffix to the
    temporary name. Arrays must not need pickling (object arrays are refused by ``np.load`` defaults).
    """
    entries = {**(arrays or {}), **named}
    savez: Callable[..., None] = np.savez_compressed if compressed else np.savez
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as fh:
        savez(fh, **entries)
    return Path(path)
