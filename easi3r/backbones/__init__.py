"""Pointmap networks behind Easi3R: the adapter contract, the DUSt3R/MonST3R network and the loaders."""

from ._reference import ScoreMatrixRecorder
from .base import Backbone, CrossAttentionReadout, EncodedImages, PairPrediction
from .dust3r import DUSt3R, DUSt3RConfig
from .registry import PRETRAINED, PretrainedCfg, create_backbone, list_backbones, load_backbone, load_weights
from .reweight import TokenMasks, token_masks

__all__ = [
    "PRETRAINED",
    "Backbone",
    "CrossAttentionReadout",
    "DUSt3R",
    "DUSt3RConfig",
    "EncodedImages",
    "PairPrediction",
    "PretrainedCfg",
    "ScoreMatrixRecorder",
    "TokenMasks",
    "create_backbone",
    "list_backbones",
    "load_backbone",
    "load_weights",
    "token_masks",
]
