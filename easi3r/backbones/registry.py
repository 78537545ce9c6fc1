"""Pretrained backbones by name, third-party registration, and :func:`load_backbone` for every checkpoint source.

Sources accepted by :func:`load_backbone`:

* a registry name: ``"dust3r"`` (512 DPT), ``"dust3r-512-linear"``, ``"dust3r-224-linear"``, ``"monst3r"``,
  ``"mast3r"`` (metric), or any name added with :func:`register_backbone`;
* a Hugging Face hub repo id (``"naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"``), fetched with ``huggingface_hub``
  (its cache, ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured);
* a local official ``.pth`` (``{"args": Namespace(model=...), "model": state_dict}``), read with
  ``torch.load(weights_only=True, mmap=True)`` and a parser for the model string (never ``eval``);
* a local ``.safetensors`` file with ``config.json`` beside it, or a folder holding both;
* a :class:`~easi3r.backbones.base.Backbone` instance (returned as is, moved to ``device``).

The adapter of a file or hub id follows the checkpoint: ``AsymmetricMASt3R`` (or ``head_type='catmlp+dpt'``) gives
:class:`~easi3r.backbones.mast3r.MASt3R`, anything else :class:`~easi3r.backbones.dust3r.DUSt3R`. The network is
built on the meta device and the checkpoint's (memory-mapped) tensors become its weights, so loading needs no
second copy of the weights in memory.

The published weights are CC BY-NC-SA 4.0 (non-commercial), by NAVER LABS Europe (DUSt3R, MASt3R) and the MonST3R
authors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import torch

from ..device import resolve_device
from ..errors import CheckpointError, Easi3RInputError, first_line
from .base import Backbone, Preprocessing
from .checkpoint import TORCH_SUFFIXES, Checkpoint, open_checkpoint
from .dust3r import DUSt3R, DUSt3RConfig
from .mast3r import MASt3R, MASt3RConfig

__all__ = [
    "PRETRAINED",
    "PretrainedCfg",
    "create_backbone",
    "list_backbones",
    "load_backbone",
    "register_backbone",
    "unregister_backbone",
]

#: A registry entry's way of making its network: a :class:`Backbone` subclass, or a function returning a ready one.
Adapter = Callable[..., Backbone]
A = TypeVar("A", bound=Adapter)

CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")
_HUB_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class PretrainedCfg:
    """A registry entry: where a network's weights live, what builds it and how its frames are prepared.

    Attributes:
        name: the registry name.
        adapter: a :class:`Backbone` subclass (with ``hub_id``: built by its
            :meth:`~easi3r.backbones.base.Backbone.from_checkpoint` from the downloaded files), or any callable
            taking no arguments and returning a ready :class:`Backbone` (without ``hub_id``: called by
            :func:`load_backbone`, e.g. a third-party factory that reads its own weights).
        hub_id: Hugging Face repo id of the weights, or None.
        files: files of ``hub_id`` to fetch; the last one is the weights (``config.json`` + ``model.safetensors``
            as the official ``PyTorchModelHubMixin`` stores them).
        architecture: the adapter's architecture configuration (e.g. a :class:`DUSt3RConfig`): the network
            :func:`create_backbone` builds and the fallback for a state dict that carries none.
        pth_url: where the official ``.pth`` is published, if anywhere (informational).
        size: download size, for ``easi3r info``.
        license: licence of the weights.
        metric: the network predicts metric pointmaps (MASt3R); the reconstruction then stays in its metres.
        preprocessing: how frames must be prepared (:class:`~easi3r.backbones.base.Preprocessing`).

    Raises:
        Easi3RInputError: a field of the wrong type.
    """

    name: str
    adapter: Adapter
    hub_id: str | None = None
    files: tuple[str, ...] = _HUB_FILES
    architecture: Any = None
    pth_url: str | None = None
    size: str = ""
    license: str = "CC BY-NC-SA 4.0"
    metric: bool = False
    preprocessing: Preprocessing = Preprocessing()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise Easi3RInputError(f"PretrainedCfg.name must be a non-empty str, got {self.name!r}")
        if not callable(self.adapter):
            raise Easi3RInputError(f"PretrainedCfg.adapter must be a Backbone class or a factory, got {self.adapter!r}")
        if self.hub_id is not None and not (isinstance(self.hub_id, str) and self.hub_id.count("/") == 1):
            raise Easi3RInputError(f"PretrainedCfg.hub_id must be None or 'owner/name', got {self.hub_id!r}")
        if self.hub_id is not None and not _is_adapter_class(self.adapter):
            raise Easi3RInputError("PretrainedCfg with a hub_id needs a Backbone subclass as adapter")
        files = self.files
        if not (isinstance(files, tuple) and files and all(isinstance(f, str) and f for f in files)):
            raise Easi3RInputError(f"PretrainedCfg.files must be a non-empty tuple of file names, got {files!r}")
        if not isinstance(self.metric, bool):
            raise Easi3RInputError(f"PretrainedCfg.metric must be a bool, got {self.metric!r}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise Easi3RInputError(
                f"PretrainedCfg.preprocessing must be a Preprocessing, got {type(self.preprocessing).__name__}"
            )


def _is_adapter_class(adapter: object) -> bool:
    return isinstance(adapter, type) and issubclass(adapter, Backbone)


_NAVER = "https://download.europe.naverlabs.com/ComputerVision/"


def _naver(
    name: str, family: type[DUSt3R], repo: str, architecture: DUSt3RConfig, size: str, **fields: Any
) -> PretrainedCfg:
    """An entry of NAVER LABS Europe's releases: hub ``naver/<repo>``, official ``.pth`` ``<repo>.pth``."""
    url = f"{_NAVER}{family.__name__}/{repo}.pth"
    return PretrainedCfg(
        name, family, hub_id=f"naver/{repo}", architecture=architecture, pth_url=url, size=size, **fields
    )


PRETRAINED: dict[str, PretrainedCfg] = {
    cfg.name: cfg
    for cfg in (
        _naver("dust3r", DUSt3R, "DUSt3R_ViTLarge_BaseDecoder_512_dpt", DUSt3RConfig(), "2.28 GB"),
        _naver(
            "dust3r-512-linear",
            DUSt3R,
            "DUSt3R_ViTLarge_BaseDecoder_512_linear",
            DUSt3RConfig(head_type="linear"),
            "2.13 GB",
        ),
        _naver(
            "dust3r-224-linear",
            DUSt3R,
            "DUSt3R_ViTLarge_BaseDecoder_224_linear",
            DUSt3RConfig(head_type="linear", img_size=(224, 224)),
            "2.13 GB",
            preprocessing=Preprocessing(image_size=224),
        ),
        PretrainedCfg(
            "monst3r",
            DUSt3R,
            hub_id="Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt",
            architecture=DUSt3RConfig(),
            size="2.28 GB",
        ),
        _naver(
            "mast3r", MASt3R, "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", MASt3RConfig(), "2.75 GB", metric=True
        ),
    )
}


@overload
def register_backbone(name: str, cfg: PretrainedCfg, *, overwrite: bool = False) -> PretrainedCfg: ...


@overload
def register_backbone(name: str, cfg: None = None, *, overwrite: bool = False, **fields: Any) -> Callable[[A], A]: ...


def register_backbone(
    name: str, cfg: PretrainedCfg | None = None, *, overwrite: bool = False, **fields: Any
) -> PretrainedCfg | Callable[[A], A]:
    """Add a backbone to :data:`PRETRAINED` so that ``load_backbone(name)`` / ``Easi3R(name)`` find it.

    Two forms (the second as timm's ``register_model``)::

        register_backbone("my-net", PretrainedCfg("my-net", MyNet, hub_id="me/my-net"))

        @register_backbone("my-net", preprocessing=Preprocessing(image_size=224), metric=True)
        def my_net() -> Backbone:  # or decorate a Backbone subclass
            ...

    Args:
        name: the registry name (also the entry's ``name``).
        cfg: the entry; omit it to get a decorator that makes the decorated class or factory the entry's
            ``adapter``, with ``fields`` as the other :class:`PretrainedCfg` fields.
        overwrite: replace an existing entry of that name (otherwise an error).

    Returns:
        The registered entry, or the decorator (which returns what it decorates, unchanged).

    Raises:
        Easi3RInputError: a name that is not a non-empty str, a name already registered (without ``overwrite``),
            ``cfg`` together with ``fields``, or fields :class:`PretrainedCfg` rejects.
    """
    if not isinstance(name, str) or not name:
        raise Easi3RInputError(f"backbone name must be a non-empty str, got {name!r}")
    if cfg is not None:
        if fields:
            raise Easi3RInputError("register_backbone takes either a PretrainedCfg or its fields, not both")
        if not isinstance(cfg, PretrainedCfg):
            raise Easi3RInputError(f"register_backbone needs a PretrainedCfg, got {type(cfg).__name__}")
        return _register(dataclasses.replace(cfg, name=name), overwrite)

    def decorate(adapter: A) -> A:
        try:
            entry = PretrainedCfg(name, adapter, **fields)
        except TypeError as e:
            raise Easi3RInputError(f"register_backbone({name!r}): {first_line(e)}") from None
        _register(entry, overwrite)
        return adapter

    if name in PRETRAINED and not overwrite:  # fail at the decorator line, before the decorated code runs
        raise Easi3RInputError(f"backbone {name!r} is already registered (pass overwrite=True to replace it)")
    return decorate


def _register(cfg: PretrainedCfg, overwrite: bool) -> PretrainedCfg:
    if cfg.name in PRETRAINED and not overwrite:
        raise Easi3RInputError(f"backbone {cfg.name!r} is already registered (pass overwrite=True to replace it)")
    PRETRAINED[cfg.name] = cfg
    return cfg


def unregister_backbone(name: str) -> PretrainedCfg:
    """Remove a registry entry and return it.

    Raises:
        Easi3RInputError: no entry of that name.
    """
    if name not in PRETRAINED:
        raise Easi3RInputError(f"backbone {name!r} is not registered; known: {', '.join(list_backbones())}")
    return PRETRAINED.pop(name)


def list_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone` besides paths and hub ids."""
    return sorted(PRETRAINED)


def _config_adapter(architecture: object) -> type[DUSt3R] | None:
    if isinstance(architecture, MASt3RConfig):
        return MASt3R
    if isinstance(architecture, DUSt3RConfig):
        return DUSt3R
    return None


def create_backbone(
    architecture: str | DUSt3RConfig = "dust3r", *, head_chunk_size: int | None = 1, fused_attention: bool = True
) -> DUSt3R:
    """A randomly initialised network of a registry name's (or a config's) architecture. No download.

    A :class:`~easi3r.backbones.mast3r.MASt3RConfig` (or the ``"mast3r"`` entry) gives a
    :class:`~easi3r.backbones.mast3r.MASt3R`. ``head_chunk_size`` and ``fused_attention`` are passed to
    :class:`~easi3r.backbones.dust3r.DUSt3R`.

    Raises:
        CheckpointError: unknown registry name, or an entry without a DUSt3R-family architecture.
    """
    arch: object = architecture
    if isinstance(architecture, str):
        if architecture not in PRETRAINED:
            raise CheckpointError(f"unknown backbone {architecture!r}; known: {', '.join(list_backbones())}")
        arch = PRETRAINED[architecture].architecture
    adapter = _config_adapter(arch)
    if adapter is None:
        raise CheckpointError(f"backbone {architecture!r} has no DUSt3R-family architecture to build")
    return adapter(cast(DUSt3RConfig, arch), head_chunk_size=head_chunk_size, fused_attention=fused_attention)


def _checkpoint_adapter(ckpt: Checkpoint, architecture: object) -> type[DUSt3R]:
    """The adapter a checkpoint needs: from the official class name, then ``head_type``, then ``architecture``."""
    if ckpt.class_name == "AsymmetricMASt3R":
        return MASt3R
    if ckpt.config is not None:
        head_type = ckpt.config.get("head_type")
        return MASt3R if isinstance(head_type, str) and head_type.startswith("catmlp") else DUSt3R
    return _config_adapter(architecture) or DUSt3R


def _from_files(path: Path, architecture: object, options: dict[str, Any], adapter: Adapter | None = None) -> Backbone:
    ckpt = open_checkpoint(path)
    cls = adapter if adapter is not None else _checkpoint_adapter(ckpt, architecture)
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):  # pragma: no cover - PretrainedCfg checks it
        raise CheckpointError(f"{path}: the adapter {cls!r} cannot be built from a checkpoint")
    return cls.from_checkpoint(ckpt.config, ckpt.state_dict, source=str(path), architecture=architecture, **options)


def _download(repo_id: str, files: tuple[str, ...] = _HUB_FILES) -> Path:
    """Fetch ``files`` of ``repo_id`` into the hub cache; returns the local path of the last one (the weights)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - a hard dependency
        raise CheckpointError("huggingface_hub is required to download checkpoints") from err
    try:
        local = [hf_hub_download(repo_id, name) for name in files]
    except Exception as err:  # the hub raises many types (offline, 404, auth, network)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set and the files are not in the cache)" if offline else ""
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face hub{hint}: {type(err).__name__}: "
            f"{first_line(err)}; pass a local .pth/.safetensors path to work offline"
        ) from None
    return Path(local[-1])


def _load_entry(cfg: PretrainedCfg, architecture: object, options: dict[str, Any]) -> Backbone:
    if cfg.hub_id is not None:
        model = _from_files(_download(cfg.hub_id, cfg.files), architecture or cfg.architecture, options, cfg.adapter)
    else:
        try:
            model = cfg.adapter()
        except TypeError as e:
            raise CheckpointError(f"backbone {cfg.name!r}: its factory failed: {first_line(e)}") from None
        if not isinstance(model, Backbone):
            raise CheckpointError(
                f"backbone {cfg.name!r}: its factory returned a {type(model).__name__}, not a Backbone"
            )
    model.preprocessing = cfg.preprocessing
    model.metric = cfg.metric
    return model


def _looks_like_path(source: str) -> bool:
    """A source meant as a file: explicit prefixes, a checkpoint suffix, or a parent folder that exists."""
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or "\\" in source or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    return len(path.parts) > 1 and path.parent.is_dir()


def load_backbone(
    source: str | os.PathLike[str] | Backbone = "dust3r",
    device: str | torch.device | None = None,
    *,
    architecture: DUSt3RConfig | None = None,
    head_chunk_size: int | None = 1,
    fused_attention: bool = True,
) -> Backbone:
    """Resolve ``source`` to a ready, eval-mode :class:`Backbone` on ``device`` (None: CUDA when available).

    The result exposes :attr:`~easi3r.backbones.base.Backbone.preprocessing` (the registry entry's, or from the
    checkpoint's training ``img_size``: 224 for a 224 model) and :attr:`~easi3r.backbones.base.Backbone.metric`.

    Args:
        source: registry name, hub repo id, local ``.pth`` / ``.safetensors`` / folder, or a Backbone instance.
            A string ending in a checkpoint suffix (``.pth .pt .bin .ckpt .safetensors``), starting with ``.``,
            ``/`` or ``~``, or whose parent folder exists is a path and must exist.
        device: target device.
        architecture: network configuration for a bare state dict that carries none (a
            :class:`~easi3r.backbones.mast3r.MASt3RConfig` builds a MASt3R).
        head_chunk_size, fused_attention: options of the :class:`~easi3r.backbones.dust3r.DUSt3R` built from a
            checkpoint (not applied to a Backbone instance or a registered factory).

    Raises:
        CheckpointError: unknown name, missing file, unreachable hub, unsafe or mismatching checkpoint.
    """
    dev = resolve_device(device)
    if isinstance(source, Backbone):
        return source.to(dev)
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"backbone source must be a name, path, hub id or Backbone, got {type(source).__name__}")
    options: dict[str, Any] = {"head_chunk_size": head_chunk_size, "fused_attention": fused_attention}
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        model = _from_files(path, architecture, options)
    elif text in PRETRAINED:
        model = _load_entry(PRETRAINED[text], architecture, options)
    elif isinstance(source, os.PathLike) or _looks_like_path(text):
        raise CheckpointError(f"checkpoint {text!r}: no such file or folder")
    elif text.count("/") == 1:
        model = _from_files(_download(text), architecture, options)
    else:
        raise CheckpointError(
            f"backbone {text!r} is neither an existing path, a registry name ({', '.join(list_backbones())}) "
            "nor a hub repo id"
        )
    model.eval().requires_grad_(False)
    return model.to(dev)
