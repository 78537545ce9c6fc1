"""Pretrained backbones by name, and :func:`load_backbone` for every checkpoint source.

Sources accepted by :func:`load_backbone`:

* a registry name: ``"dust3r"`` (512 DPT), ``"dust3r-512-linear"``, ``"dust3r-224-linear"``, ``"monst3r"``;
* a Hugging Face hub repo id (``"naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"``), fetched with ``huggingface_hub``
  (its cache, ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured);
* a local official ``.pth`` (``{"args": Namespace(model=...), "model": state_dict}``), read with
  ``torch.load(weights_only=True)`` and a parser for the model string (never ``eval``);
* a local ``.safetensors`` file with ``config.json`` beside it, or a folder holding both;
* a :class:`~easi3r.backbones.base.Backbone` instance (returned as is, moved to ``device``).

The weights are CC BY-NC-SA 4.0 (non-commercial), by NAVER LABS Europe (DUSt3R) and the MonST3R authors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..device import resolve_device
from ..errors import CheckpointError, first_line
from .base import Backbone
from .checkpoint import read_checkpoint
from .dust3r import DUSt3R, DUSt3RConfig

__all__ = ["PRETRAINED", "PretrainedCfg", "create_backbone", "list_backbones", "load_backbone", "load_weights"]


@dataclass(frozen=True)
class PretrainedCfg:
    """A published checkpoint: where it lives and what network it needs."""

    name: str
    hub_id: str
    architecture: DUSt3RConfig
    pth_url: str | None
    size: str
    license: str = "CC BY-NC-SA 4.0"


_NAVER = "https://download.europe.naverlabs.com/ComputerVision/DUSt3R/"

PRETRAINED: dict[str, PretrainedCfg] = {
    "dust3r": PretrainedCfg(
        "dust3r",
        "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt",
        DUSt3RConfig(),
        _NAVER + "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth",
        "2.28 GB",
    ),
    "dust3r-512-linear": PretrainedCfg(
        "dust3r-512-linear",
        "naver/DUSt3R_ViTLarge_BaseDecoder_512_linear",
        DUSt3RConfig(head_type="linear"),
        _NAVER + "DUSt3R_ViTLarge_BaseDecoder_512_linear.pth",
        "2.13 GB",
    ),
    "dust3r-224-linear": PretrainedCfg(
        "dust3r-224-linear",
        "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear",
        DUSt3RConfig(head_type="linear", img_size=(224, 224)),
        _NAVER + "DUSt3R_ViTLarge_BaseDecoder_224_linear.pth",
        "2.13 GB",
    ),
    "monst3r": PretrainedCfg(
        "monst3r",
        "Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt",
        DUSt3RConfig(),
        None,
        "2.28 GB",
    ),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone` besides paths and hub ids."""
    return sorted(PRETRAINED)


def create_backbone(
    architecture: str | DUSt3RConfig = "dust3r", *, head_chunk_size: int | None = 1, fused_attention: bool = True
) -> DUSt3R:
    """A randomly initialised network of a registry name's (or a config's) architecture. No download.

    ``head_chunk_size`` and ``fused_attention`` are passed to :class:`~easi3r.backbones.dust3r.DUSt3R`.

    Raises:
        CheckpointError: unknown registry name.
    """
    if isinstance(architecture, str):
        if architecture not in PRETRAINED:
            raise CheckpointError(f"unknown backbone {architecture!r}; known: {', '.join(list_backbones())}")
        architecture = PRETRAINED[architecture].architecture
    return DUSt3R(architecture, head_chunk_size=head_chunk_size, fused_attention=fused_attention)


def _shared_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Groups of state-dict names that point at one tensor (e.g. ``layer1_rn`` / ``layer_rn.0``)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {names[0]: names for names in groups.values() if len(names) > 1}


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state_dict`` strictly, accepting either name of aliased tensors.

    Raises:
        CheckpointError: missing or unexpected keys (the first few are named), or a tensor of the wrong shape.
    """
    sd = dict(state_dict)
    for names in _shared_names(model).values():
        present = [n for n in names if n in sd]
        if present:
            for n in names:
                sd.setdefault(n, sd[present[0]])
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{source} does not match the network: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(sd[k].shape)}, the network expects {tuple(v.shape)}"
            )
    model.load_state_dict({k: sd[k].to(v.dtype) for k, v in expected.items()}, strict=True)


def _from_files(path: Path, architecture: DUSt3RConfig | None, build: Callable[[DUSt3RConfig], DUSt3R]) -> DUSt3R:
    config, state_dict = read_checkpoint(path)
    if config is not None:
        arch = DUSt3RConfig.from_official(config)
    elif architecture is not None:
        arch = architecture
    else:
        raise CheckpointError(f"{path}: the checkpoint carries no model configuration; pass architecture=")
    model = build(arch)
    load_weights(model, state_dict, source=str(path))
    return model


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - a hard dependency
        raise CheckpointError("huggingface_hub is required to download checkpoints") from err
    try:
        config = hf_hub_download(repo_id, "config.json")
        hf_hub_download(repo_id, "model.safetensors")
    except Exception as err:  # the hub raises many types (offline, 404, auth, network)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set and the files are not in the cache)" if offline else ""
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face hub{hint}: {type(err).__name__}: "
            f"{first_line(err)}; pass a local .pth/.safetensors path to work offline"
        ) from None
    return Path(config).parent


def load_backbone(
    source: str | os.PathLike[str] | Backbone = "dust3r",
    device: str | torch.device | None = None,
    *,
    architecture: DUSt3RConfig | None = None,
    head_chunk_size: int | None = 1,
    fused_attention: bool = True,
) -> Backbone:
    """Resolve ``source`` to a ready, eval-mode :class:`Backbone` on ``device`` (None: CUDA when available).

    Args:
        source: registry name, hub repo id, local ``.pth`` / ``.safetensors`` / folder, or a Backbone instance.
        device: target device.
        architecture: network configuration for a bare state dict that carries none.
        head_chunk_size, fused_attention: options of the :class:`~easi3r.backbones.dust3r.DUSt3R` built from a
            checkpoint (not applied to a Backbone instance, which is returned as it is).

    Raises:
        CheckpointError: unknown name, unreachable hub, unsafe or mismatching checkpoint.
    """
    dev = resolve_device(device)
    if isinstance(source, Backbone):
        return source.to(dev)
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"backbone source must be a name, path, hub id or Backbone, got {type(source).__name__}")
    build = partial(DUSt3R, head_chunk_size=head_chunk_size, fused_attention=fused_attention)
    path = Path(source).expanduser()
    if path.exists():
        model = _from_files(path, architecture, build)
    elif str(source) in PRETRAINED:
        model = _from_files(_download(PRETRAINED[str(source)].hub_id), architecture, build)
    elif "/" in str(source) and not str(source).startswith((".", "/", "~")) and str(source).count("/") == 1:
        model = _from_files(_download(str(source)), architecture, build)
    else:
        raise CheckpointError(
            f"backbone {str(source)!r} is neither an existing path, a registry name ({', '.join(list_backbones())}) "
            "nor a hub repo id"
        )
    model.eval().requires_grad_(False)
    return model.to(dev)
