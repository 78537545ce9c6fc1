"""Transformer layers of the DUSt3R / CroCo network: patch embedding, 2-D RoPE, attention, blocks.

They follow the official ``croco/models/blocks.py`` (``Attention``, ``CrossAttention``, ``Mlp``, ``Block``,
``DecoderBlock``), ``croco/models/pos_embed.py`` (``RoPE2D``) and ``dust3r/patch_embed.py`` (``PatchEmbedDust3R``),
with the same state-dict names. Every attention runs through :func:`attention`, whose path each layer fixes when it is
built (``fused``):

* ``fused=True`` (default): :func:`torch.nn.functional.scaled_dot_product_attention`; no ``N x N`` matrix is
  ever held by this code. Easi3R's re-weighting runs as :func:`easi3r.backbones.reweight.reweighted_attention`.
* ``fused=False``: the explicit reference (logits, softmax, product with the values) of
  :func:`easi3r.backbones._reference.reference_attention`, as the official code computes it.

The readout is taken by a probe passed into the cross-attention (:data:`~easi3r.backbones.base.AttentionProbe`,
:class:`~easi3r.backbones.base.CrossAttentionReadout`), on either path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._checks import check_shape
from ..errors import CheckpointError, Easi3RInputError
from ._reference import reference_attention
from .base import AttentionProbe
from .reweight import TokenMasks, reweighted_attention

__all__ = [
    "AttentionProbe",
    "Block",
    "CrossAttention",
    "DecoderBlock",
    "Mlp",
    "PatchEmbed",
    "RoPE2D",
    "SelfAttention",
    "attention",
    "check_head_dim",
    "grid_positions",
]


def grid_positions(h: int, w: int, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Token positions of an ``h x w`` patch grid in row-major order.

    Returns:
        ``(batch, h*w, 2)`` int64 with ``pos[b, n] = (n // w, n % w)``: index 0 is the row (y), index 1 the column (x).

    Example:
        >>> grid_positions(2, 3, 1)[0].tolist()
        [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)
    return pos.unsqueeze(0).expand(batch, -1, -1)


def check_head_dim(dim: int, heads: int) -> None:
    """Raise :class:`CheckpointError` if ``dim`` does not split into RoPE-compatible heads (head dim divisible by 4)."""
    if dim % heads or (dim // heads) % 4:
        raise CheckpointError(
            f"embedding dim {dim} with {heads} heads gives head dim {dim / heads}, need a multiple of 4"
        )


class RoPE2D(nn.Module):
    """2-D rotary position embedding of CroCo ("RoPE100", official ``croco/models/pos_embed.py`` ``RoPE2D``).

    The head dimension ``D`` is split in two halves; the first is rotated by the row (y) position, the second by the
    column (x) position. Within a half of size ``D' = D/2`` the pairs ``(t[k], t[k + D'/2])`` are rotated by the angle
    ``p * base^(-2k/D')`` ("rotate-half" pairing). Tables are built in float32 and cast to the token dtype, as the
    official pure-PyTorch fallback does, and cached per ``(D', positions, device, dtype)``.

    Args:
        base: frequency base (100 for every published checkpoint).
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = float(base)
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _tables(self, dim: int, n_pos: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (dim, n_pos, device, dtype)
        if key not in self._cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            t = torch.arange(n_pos, device=device, dtype=inv_freq.dtype)
            freqs = torch.einsum("i,j->ij", t, inv_freq).to(dtype)
            freqs = torch.cat((freqs, freqs), dim=-1)
            self._cache[key] = (freqs.cos(), freqs.sin())
        return self._cache[key]

    @staticmethod
    def _rotate(x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x: (B, heads, N, D'); pos: (B, N) -> tables gathered per token and broadcast over heads.
        c = F.embedding(pos, cos)[:, None]
        s = F.embedding(pos, sin)[:, None]
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * c + rotated * s

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``tokens (B, heads, N, D)`` by ``positions (B, N, 2)`` (int64, (y, x)); D must be a multiple of 4."""
        dim = tokens.shape[-1]
        if dim % 4:
            raise CheckpointError(f"RoPE2D needs a head dimension divisible by 4, got {dim}")
        half = dim // 2
        cos, sin = self._tables(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        y, x = tokens[..., :half], tokens[..., half:]
        y = self._rotate(y, positions[..., 0], cos, sin)
        x = self._rotate(x, positions[..., 1], cos, sin)
        return torch.cat((y, x), dim=-1)


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float, reweight: TokenMasks | None = None, fused: bool = True
) -> Tensor:
    """Softmax attention with Easi3R's optional re-weighting.

    Args:
        q: ``(B, heads, Nq, D)`` queries (RoPE applied).
        k: ``(B, heads, Nk, D)`` keys (RoPE applied).
        v: ``(B, heads, Nk, Dv)`` values.
        scale: logit scale, ``D ** -0.5``.
        reweight: ``(B, Nq)`` / ``(B, Nk)`` bool dynamic query / key tokens (True = dynamic), or None.
        fused: use ``scaled_dot_product_attention`` (True) or the explicit reference (False).

    Returns:
        ``(B, heads, Nq, Dv)``. With ``reweight``, a static query's probabilities on dynamic keys are zero and the
        remaining ones are **not** renormalised (paper Sec. 3.3, :mod:`easi3r.backbones.reweight`).
    """
    if not fused:
        return reference_attention(q, k, v, scale=scale, masks=reweight)
    if reweight is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return reweighted_attention(q, k, v, scale=scale, masks=reweight)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def _merge_heads(x: Tensor) -> Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


class _MultiHeadAttention(nn.Module):
    """What the self- and cross-attention share: heads, logit scale, the RoPE and the attention path.

    Args:
        dim: token width C. num_heads: heads (``C / heads`` divisible by 4). rope: the shared RoPE, or None.
        fused: SDPA (True) or the explicit reference attention (False).
    """

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None, *, fused: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.rope = rope  # no parameters: the state-dict names and order are those of the subclasses' layers
        self.fused = fused

    def _rotate(self, q: Tensor, k: Tensor, qpos: Tensor, kpos: Tensor) -> tuple[Tensor, Tensor]:
        if self.rope is None:
            return q, k
        return self.rope(q, qpos), self.rope(k, kpos)


class SelfAttention(_MultiHeadAttention):
    """Multi-head self-attention with 2-D RoPE (official ``Attention``; state-dict names ``qkv``, ``proj``).

    Args: see :class:`_MultiHeadAttention`.
    """

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None, *, fused: bool = True) -> None:
        super().__init__(dim, num_heads, rope, fused=fused)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x (B, N, C)``, ``pos (B, N, 2)`` -> ``(B, N, C)``."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k = self._rotate(q, k, pos, pos)
        out: Tensor = self.proj(_merge_heads(attention(q, k, v, scale=self.scale, fused=self.fused)))
        return out


class CrossAttention(_MultiHeadAttention):
    """Multi-head cross-attention with 2-D RoPE (official ``CrossAttention``; state-dict names ``projq``, ``projk``,
    ``projv``, ``proj``).

    Args: see :class:`_MultiHeadAttention`.
    """

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None, *, fused: bool = True) -> None:
        super().__init__(dim, num_heads, rope, fused=fused)
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        qpos: Tensor,
        kpos: Tensor,
        *,
        probe: AttentionProbe | None = None,
        reweight: TokenMasks | None = None,
    ) -> Tensor:
        """``query (B, Nq, C)``, ``key``/``value (B, Nk, C)``, positions ``(B, N, 2)`` -> ``(B, Nq, C)``.

        ``probe`` receives the rotated q and k (see :data:`~easi3r.backbones.base.AttentionProbe`); ``reweight``
        (dynamic query / key tokens) enables the re-weighting.
        """
        q, k = self._queries_keys(query, key, qpos, kpos)
        v = _split_heads(self.projv(value), self.num_heads)
        if probe is not None:
            probe(q, k, self.scale)
        out = attention(q, k, v, scale=self.scale, reweight=reweight, fused=self.fused)
        projected: Tensor = self.proj(_merge_heads(out))
        return projected

    def readout(self, query: Tensor, key: Tensor, qpos: Tensor, kpos: Tensor, probe: AttentionProbe) -> None:
        """Only hand the rotated q and k to ``probe`` (same values as :meth:`forward` would): for a layer whose
        output nobody reads, the values, the attention and the output projection are skipped."""
        q, k = self._queries_keys(query, key, qpos, kpos)
        probe(q, k, self.scale)

    def _queries_keys(self, query: Tensor, key: Tensor, qpos: Tensor, kpos: Tensor) -> tuple[Tensor, Tensor]:
        q = _split_heads(self.projq(query), self.num_heads)
        k = _split_heads(self.projk(key), self.num_heads)
        return self._rotate(q, k, qpos, kpos)


class Mlp(nn.Module):
    """``fc1 -> GELU (erf) -> fc2`` (official croco ``models/blocks.py`` ``Mlp``): ``dim -> hidden -> out``
    (``out`` None: ``dim``)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim if out is None else out)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    """Pre-norm ViT encoder block (official ``Block``): ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None, *, fused: bool = True) -> None:
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope, fused=fused)
        self.norm2 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x (B, N, C)``, ``pos (B, N, 2)`` -> ``(B, N, C)``."""
        x = x + self.attn(self.norm1(x), pos)
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class DecoderBlock(nn.Module):
    """CroCo decoder block (official ``DecoderBlock``): self-attention, cross-attention to the other view, MLP (all
    pre-norm).

    The other view's tokens ``y`` are normalised by ``norm_y`` (``norm_im2_in_dec=True`` in every checkpoint).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None, *, fused: bool = True) -> None:
        super().__init__()
        # Registration order fixes the state-dict key order of the official checkpoints.
        self.norm1 = _norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope, fused=fused)
        self.cross_attn = CrossAttention(dim, num_heads, rope, fused=fused)
        self.norm2 = _norm(dim)
        self.norm3 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = _norm(dim)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        xpos: Tensor,
        ypos: Tensor,
        *,
        probe: AttentionProbe | None = None,
        reweight: TokenMasks | None = None,
    ) -> Tensor:
        """Update ``x (B, Nx, C)`` given the other view ``y (B, Ny, C)`` (positions ``(B, N, 2)``); returns the new
        ``x``. ``probe`` and ``reweight`` go to the cross-attention (queries from ``x``, keys from ``y``)."""
        x = x + self.attn(self.norm1(x), xpos)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_, y_, xpos, ypos, probe=probe, reweight=reweight)
        out: Tensor = x + self.mlp(self.norm3(x))
        return out

    def readout(self, x: Tensor, y: Tensor, xpos: Tensor, ypos: Tensor, *, probe: AttentionProbe) -> None:
        """Run this block only as far as its cross-attention readout: ``probe`` receives exactly what
        :meth:`forward` would give it; the block's output is not computed (a last layer without heads)."""
        x = x + self.attn(self.norm1(x), xpos)
        self.cross_attn.readout(self.norm2(x), self.norm_y(y), xpos, ypos, probe)


class PatchEmbed(nn.Module):
    """16x16 patch embedding (``proj``) that keeps the image orientation (official ``PatchEmbedDust3R``).

    Portrait images are embedded as they are, on their true ``(H/16, W/16)`` grid: the official inference loaders use
    this class (``landscape_only=False``) and the training-time ``ManyAR_PatchEmbed`` computes the same tokens.
    """

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B, 3, H, W)`` -> tokens ``(B, N, C)`` and positions ``(B, N, 2)``.

        Raises:
            Easi3RInputError: not ``(B, 3, H, W)``, or ``H`` / ``W`` not a multiple of the patch size.
        """
        dims = check_shape(images, "B 3 H W", "images")
        b, h, w, p = dims["B"], dims["H"], dims["W"], self.patch_size
        if h % p or w % p:
            raise Easi3RInputError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        tokens = rearrange(self.proj(images), "b c h w -> b (h w) c")
        return tokens, grid_positions(h // p, w // p, b, images.device)
