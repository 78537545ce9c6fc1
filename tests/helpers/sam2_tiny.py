"""SAM2 test tooling: a fake video predictor with exactly known outputs, and a tiny random-weight real SAM2.

* :class:`FakeVideoPredictor` implements the part of SAM2's video-predictor API that
  :mod:`easi3r.refine` uses and records every call. Its prediction for frame ``f`` is the **prompt of the
  nearest prompted frame before ``f``** (the first prompted frame for frames before it), encoded as logits
  ``0.5`` (dynamic) / ``0.0`` (static: exactly zero, so a ``>= 0`` threshold would be caught); a prompted frame
  returns its own prompt. So the expected refinement of any mask stack is known in closed form
  (:func:`expected_parity_split`). With ``box=(y0, y1, x0, x1)`` it predicts that box on every frame instead
  (a SAM2 that disagrees with the attention masks, for the pipeline wiring tests).
* :func:`tiny_sam2_refiner`: the real ``sam2`` package's smallest SAM2.1 config, randomly initialised (no
  weights exist offline), at a reduced input size for CPU speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from easi3r.refine import TINY_CONFIG, SAM2VideoRefiner

__all__ = ["FakeVideoPredictor", "expected_parity_split", "save_sam2_checkpoint", "tiny_sam2_refiner"]


class FakeVideoPredictor:
    """SAM2's video-predictor API with closed-form predictions (see the module docstring)."""

    def __init__(self, image_size: int = 16, box: tuple[int, int, int, int] | None = None) -> None:
        self.image_size = image_size
        self.box = box
        self.device = torch.device("cpu")
        self.calls: list[tuple[Any, ...]] = []

    def init_state(self, video_path: str, offload_video_to_cpu: bool = False) -> dict[str, Any]:
        names = sorted(os.listdir(video_path), key=lambda p: int(os.path.splitext(p)[0]))
        self.calls.append(("init_state", len(names), offload_video_to_cpu))
        n = len(names)
        images = torch.zeros(n, 3, self.image_size, self.image_size)
        return {"images": images, "num_frames": n, "video_height": 1, "video_width": 1,
                "cached_features": {0: "placeholder"}, "prompts": {}}  # fmt: skip

    def reset_state(self, inference_state: dict[str, Any]) -> None:
        self.calls.append(("reset_state",))
        inference_state["prompts"] = {}

    def add_new_mask(self, inference_state: dict[str, Any], frame_idx: int, obj_id: int, mask: Tensor) -> Any:
        self.calls.append(("add_new_mask", frame_idx, obj_id))
        inference_state["prompts"][frame_idx] = mask.clone()
        return frame_idx, [obj_id], None

    def propagate_in_video(
        self, inference_state: dict[str, Any], start_frame_idx: int | None = None
    ) -> Iterator[tuple[int, list[int], Tensor]]:
        self.calls.append(("propagate_in_video", start_frame_idx))
        prompts: dict[int, Tensor] = inference_state["prompts"]
        start = min(prompts) if start_frame_idx is None else start_frame_idx
        for f in range(start, inference_state["num_frames"]):
            before = [p for p in prompts if p <= f]
            source = prompts[max(before)] if before else prompts[min(prompts)]
            if self.box is not None:
                y0, y1, x0, x1 = self.box
                source = torch.zeros_like(source)
                source[y0:y1, x0:x1] = True
            yield f, [1], (source.float() * 0.5)[None, None]


def expected_parity_split(masks: np.ndarray) -> np.ndarray:
    """What the official parity split gives with :class:`FakeVideoPredictor`: frame ``f`` gets the prompt of
    ``f - 1`` (the nearest other-parity frame before it), frame 0 the prompt of frame 1."""
    out = np.empty_like(masks)
    out[0] = masks[1]
    out[1:] = masks[:-1]
    return out


def tiny_sam2_refiner(image_size: int = 128, seed: int = 0) -> SAM2VideoRefiner:
    """A real SAM2.1-tiny video predictor with random weights on CPU (``image_size`` overrides 1024)."""
    torch.manual_seed(seed)
    return SAM2VideoRefiner.from_pretrained(
        None, config_name=TINY_CONFIG, device="cpu", hydra_overrides=[f"++model.image_size={image_size}"]
    )


def save_sam2_checkpoint(path: Path, refiner: SAM2VideoRefiner) -> Path:
    """The official SAM2 checkpoint layout (``{"model": state_dict}``, read by ``build_sam._load_checkpoint``)."""
    model = refiner.predictor
    assert isinstance(model, torch.nn.Module)
    torch.save({"model": model.state_dict()}, path)
    return path
