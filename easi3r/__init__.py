"""easi3r: training-free dynamic-object masks, cameras and 4D points from a casual video.

Quick start::

    from easi3r import Easi3R
    rec = Easi3R(backbone="monst3r").run("video.mp4")
    rec.save("out/")
"""

from __future__ import annotations

from .backbones import Backbone, load_backbone
from .config import AlignConfig, Easi3RConfig
from .errors import CheckpointError, Easi3RInputError
from .frames import Frames, load_frames
from .pipeline import Easi3R
from .result import Reconstruction

__version__ = "0.1.0"

__all__ = [
    "AlignConfig",
    "Backbone",
    "CheckpointError",
    "Easi3R",
    "Easi3RConfig",
    "Easi3RInputError",
    "Frames",
    "Reconstruction",
    "__version__",
    "load_backbone",
    "load_frames",
]
