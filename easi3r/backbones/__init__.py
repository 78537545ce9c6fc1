"""Pointmap networks behind Easi3R: the adapter contract, the DUSt3R/MonST3R/MASt3R networks, the registry and the
loaders."""

from ._reference import ScoreMatrixRecorder
from .base import Backbone, CrossAttentionReadout, EncodedImages, PairPrediction, Preprocessing
from .checkpoint import load_weights
from .dust3r import DUSt3R, DUSt3RConfig
from .mast3r import MASt3R, MASt3RConfig
from .registry import (
    PRETRAINED,
    PretrainedCfg,
    create_backbone,
    list_backbones,
    load_backbone,
    register_backbone,
    unregister_backbone,
)
from .reweight import TokenMasks, token_masks

__all__ = [
    "PRETRAINED",
    "Backbone",
    "CrossAttentionReadout",
    "DUSt3R",
    "DUSt3RConfig",
    "EncodedImages",
    "MASt3R",
    "MASt3RConfig",
    "PairPrediction",
    "Preprocessing",
    "PretrainedCfg",
    "ScoreMatrixRecorder",
    "TokenMasks",
    "create_backbone",
    "list_backbones",
    "load_backbone",
    "load_weights",
    "register_backbone",
    "token_masks",
    "unregister_backbone",
]
