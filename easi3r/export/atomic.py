"""Atomic file writes: a reader never sees a truncated file under a final name.

Every writer here produces the file under a hidden temporary name in the *same* folder (so the final
:func:`os.replace` is a rename within one file system, which POSIX and Windows make atomic), flushes it
to disk, and only then renames it. On any failure, including ``KeyboardInterrupt``, the temporary file
is removed and the exception propagates; a file that already existed under the final name is left
untouched.

Temporary names look like ``.<final name>.<random>.tmp<suffix>``: they keep the final suffix because
several writers (OpenCV, trimesh) choose the format from the extension.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
]

TEMP_MARKER = ".tmp"


def is_temp_name(name: str | os.PathLike[str]) -> bool:
    """True for a file name produced by :func:`atomic_path` (leftovers after a crash can be deleted)."""
    base = Path(name).name
    return base.startswith(".") and TEMP_MARKER in base


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
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=f"{TEMP_MARKER}{final.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
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
