"""Writers and readers of the files a reconstruction is exported to (all writes are atomic)."""

from .atomic import atomic_path, atomic_save_npz, atomic_write_bytes, atomic_write_text
from .colmap import write_colmap
from .images import attention_strip, colorize, mask_overlay, write_mask_pngs, write_png
from .mesh import scene_with_cameras, write_glb, write_ply
from .save import read_reconstruction, save_reconstruction
from .tum import read_tum, write_tum

__all__ = [
    "atomic_path",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "attention_strip",
    "colorize",
    "mask_overlay",
    "read_reconstruction",
    "read_tum",
    "save_reconstruction",
    "scene_with_cameras",
    "write_colmap",
    "write_glb",
    "write_mask_pngs",
    "write_ply",
    "write_png",
    "write_tum",
]
