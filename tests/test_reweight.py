"""Token masks (easi3r.backbones.reweight) and the re-weighted attention reference (easi3r.backbones._reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from easi3r.backbones import token_masks
from easi3r.backbones._reference import reference_attention
from easi3r.backbones.reweight import TokenMasks, dropped_weights
from easi3r.errors import Easi3RInputError


def test_token_masks_crafted(device: str) -> None:
    m = torch.zeros(2, 32, 48, dtype=torch.bool, device=device)  # 2 x 3 tokens
    m[0, 17, 33] = True  # one pixel -> token (1, 2) = index 5
    m[1, 0:16, 0:16] = True  # a full patch -> token 0
    m[1, 15, 16] = True  # last row of token (0, 1) -> index 1
    tm = token_masks(m)
    assert tm.device.type == device and tm.dtype == torch.bool and tm.shape == (2, 6)
    assert tm[0].tolist() == [False, False, False, False, False, True]
    assert tm[1].tolist() == [True, True, False, False, False, False]
    # the official formulation: MaxPool2d(16, 16) on the float mask, flattened row-major
    pooled = F.max_pool2d(m.float()[:, None], 16, 16).flatten(1) > 0.5
    assert torch.equal(tm, pooled)


def test_token_masks_random_against_maxpool_and_errors() -> None:
    m = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0)) > 0.999
    assert torch.equal(token_masks(m, patch=8), F.max_pool2d(m.float()[:, None], 8, 8).flatten(1) > 0.5)
    with pytest.raises(Easi3RInputError, match="multiple"):
        token_masks(torch.zeros(1, 30, 32, dtype=torch.bool))
    with pytest.raises(Easi3RInputError, match="bool"):
        token_masks(torch.zeros(1, 32, 32))
    with pytest.raises(Easi3RInputError):
        token_masks(torch.zeros(32, 32, dtype=torch.bool))


def test_reweight_reference_hand_built() -> None:
    # 2 queries, 3 keys, D = 3 with only the first component used: logits = q0 * k0 (scale 1);
    # v = identity, so the output rows are the (re-weighted) probability rows themselves
    q = torch.tensor([[1.0, 0, 0], [2.0, 0, 0]]).view(1, 1, 2, 3)
    k = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]).view(1, 1, 3, 3)
    v = torch.eye(3).view(1, 1, 3, 3)
    qd = torch.tensor([[False, True]])  # query 0 static, query 1 dynamic
    kd = torch.tensor([[False, True, False]])  # key 1 dynamic
    out = reference_attention(q, k, v, scale=1.0, masks=TokenMasks(qd, kd))
    assert dropped_weights(TokenMasks(qd, kd))[0, 0].tolist() == [[False, True, False], [False, False, False]]

    def softmax(xs: list[float]) -> list[float]:
        e = [math.exp(x) for x in xs]
        return [x / sum(e) for x in e]

    row0 = softmax([0.0, 1.0, 2.0])
    row0[1] = 0.0  # static query, dynamic key: zeroed, not renormalised
    row1 = softmax([0.0, 2.0, 4.0])  # dynamic query keeps everything
    expected = torch.tensor([row0, row1]).view(1, 1, 2, 3)
    torch.testing.assert_close(out, expected)
    assert float(out[0, 0, 0].sum()) < 1.0


def test_reweight_reference_equals_sdpa_without_dynamic_keys(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g).to(device) for n in (5, 7, 7))
    qm = torch.zeros(2, 5, dtype=torch.bool, device=device)
    km = torch.zeros(2, 7, dtype=torch.bool, device=device)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(reference_attention(q, k, v, scale=8**-0.5, masks=TokenMasks(qm, km)), sdpa, **tol)
    torch.testing.assert_close(reference_attention(q, k, v, scale=8**-0.5), sdpa, **tol)
    # all queries dynamic: masks on keys have no effect either
    km[:, 2] = True
    out = reference_attention(q, k, v, scale=8**-0.5, masks=TokenMasks(~qm, km))
    torch.testing.assert_close(out, sdpa, **tol)
    # all queries static: the dynamic key's contribution is removed, the rest unchanged
    probs = torch.softmax(q @ k.transpose(-2, -1) * 8**-0.5, -1)
    probs[..., 2] = 0
    torch.testing.assert_close(reference_attention(q, k, v, scale=8**-0.5, masks=TokenMasks(qm, km)), probs @ v)
    for masks in (TokenMasks(qm[:, :3], km), TokenMasks(qm, km[:1]), TokenMasks(qm.float(), km)):
        with pytest.raises(Easi3RInputError) as e:
            reference_attention(q, k, v, scale=1.0, masks=masks)
        assert "\n" not in str(e.value)
    with pytest.raises(Easi3RInputError, match="k must have shape"):
        reference_attention(q, k[..., :4], v, scale=1.0)
    with pytest.raises(Easi3RInputError, match="v must have shape"):
        reference_attention(q, k, v[:, :, :3], scale=1.0)
