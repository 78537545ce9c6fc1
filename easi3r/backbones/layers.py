"""Transformer layers of the DUSt3R / CroCo network: patch embedding, 2-D RoPE, attention, blocks.

Every attention runs through :func:`attention`, which has two interchangeable paths:

* ``fused=True`` (default): :func:`torch.nn.functional.scaled_dot_product_attention`; no ``N x N`` matrix is
  ever held by this code.
* ``fused=False``: the explicit reference (logits, softmax, product with the values), as the official code does.

Easi3R needs two things from inside the decoder, both available on the fused path:

* the **readout** (a probe passed into the decoder, see :class:`AttentionProbe`): the pre-softmax scores averaged
  over the query tokens. Because the mean is linear,

  .. math:: \\frac{1}{N_q}\\sum_q \\frac{q\\cdot k}{\\sqrt d} = \\frac{\\bar q \\cdot k}{\\sqrt d},
            \\qquad \\bar q = \\frac{1}{N_q}\\sum_q q,

  which costs ``O(N)`` memory per layer instead of ``O(N^2)``.
* the **re-weighting** of the second pass: post-softmax probabilities of (static query, dynamic key) entries are set to
  zero *without renormalisation*. For a static query this equals ordinary attention over values whose dynamic keys are
  zeroed (the softmax denominator still includes them), so the fused path evaluates attention once over
  ``[v, v * static_key]`` and picks, per query, the half that applies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "grid_positions",
]

#: Called by a cross-attention layer with its rotated queries ``(B, heads, Nq, D)``, keys ``(B, heads, Nk, D)`` and
#: the logit scale. The decoder binds the branch and layer index before handing it to a block.
AttentionProbe = Callable[[Tensor, Tensor, float], None]


def grid_positions(h: int, w: int, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Token positions of an ``h x w`` patch grid in row-major order.

    Returns:
        ``(batch, h*w, 2)`` int64 with ``pos[b, n] = (n // w, n % w)``: index 0 is the row (y), index 1 the column (x).
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)
    return pos.unsqueeze(0).expand(batch, -1, -1)


class RoPE2D(nn.Module):
    """2-D rotary position embedding of CroCo ("RoPE100").

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
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

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
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {dim}")
        half = dim // 2
        cos, sin = self._tables(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        y, x = tokens[..., :half], tokens[..., half:]
        y = self._rotate(y, positions[..., 0], cos, sin)
        x = self._rotate(x, positions[..., 1], cos, sin)
        return torch.cat((y, x), dim=-1)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    query_dynamic: Tensor | None = None,
    key_dynamic: Tensor | None = None,
    fused: bool = True,
) -> Tensor:
    """Softmax attention with Easi3R's optional re-weighting.

    Args:
        q: ``(B, heads, Nq, D)`` queries (RoPE applied).
        k: ``(B, heads, Nk, D)`` keys (RoPE applied).
        v: ``(B, heads, Nk, Dv)`` values.
        scale: logit scale, ``D ** -0.5``.
        query_dynamic: ``(B, Nq)`` bool, True where the query token is dynamic. Re-weighting is applied only when both
            masks are given.
        key_dynamic: ``(B, Nk)`` bool, True where the key token is dynamic.
        fused: use ``scaled_dot_product_attention`` (True) or the explicit reference (False).

    Returns:
        ``(B, heads, Nq, Dv)``. With masks, a static query's probabilities on dynamic keys are zero and the remaining
        ones are **not** renormalised (pipeline.md §2).
    """
    masked = query_dynamic is not None and key_dynamic is not None
    if not fused:
        probs = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        if masked:
            drop = (~query_dynamic)[:, None, :, None] & key_dynamic[:, None, None, :]
            probs = probs.masked_fill(drop, 0.0)
        return probs @ v
    if not masked:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # One pass over [v | v with dynamic keys zeroed]: the left half is the plain output (dynamic queries), the
    # right half is the re-weighted one (static queries).
    v_static = v * (~key_dynamic)[:, None, :, None].to(v.dtype)
    both = F.scaled_dot_product_attention(q, k, torch.cat((v, v_static), dim=-1), scale=scale)
    plain, reweighted = both.split(v.shape[-1], dim=-1)
    return torch.where(query_dynamic[:, None, :, None], plain, reweighted)


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2-D RoPE (state-dict names ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.fused = True

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x (B, N, C)``, ``pos (B, N, 2)`` -> ``(B, N, C)``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        out = attention(q, k, v, scale=self.scale, fused=self.fused)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with 2-D RoPE (state-dict names ``projq``, ``projk``, ``projv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.fused = True

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        qpos: Tensor,
        kpos: Tensor,
        *,
        probe: AttentionProbe | None = None,
        query_dynamic: Tensor | None = None,
        key_dynamic: Tensor | None = None,
    ) -> Tensor:
        """``query (B, Nq, C)``, ``key``/``value (B, Nk, C)``, positions ``(B, N, 2)`` -> ``(B, Nq, C)``.

        ``probe`` receives the rotated q and k (see :data:`AttentionProbe`); the masks enable re-weighting.
        """
        b, nq, c = query.shape
        nk = key.shape[1]
        d = c // self.num_heads
        q = self.projq(query).reshape(b, nq, self.num_heads, d).transpose(1, 2)
        k = self.projk(key).reshape(b, nk, self.num_heads, d).transpose(1, 2)
        v = self.projv(value).reshape(b, nk, self.num_heads, d).transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q, qpos), self.rope(k, kpos)
        if probe is not None:
            probe(q, k, self.scale)
        out = attention(
            q, k, v, scale=self.scale, query_dynamic=query_dynamic, key_dynamic=key_dynamic, fused=self.fused
        )
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class Mlp(nn.Module):
    """``fc1 -> GELU (erf) -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    """Pre-norm ViT encoder block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None) -> None:
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.norm2 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view, MLP (all pre-norm).

    The other view's tokens ``y`` are normalised by ``norm_y`` (``norm_im2_in_dec=True`` in every checkpoint).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None) -> None:
        super().__init__()
        # Registration order fixes the state-dict key order of the official checkpoints.
        self.norm1 = _norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
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
        query_dynamic: Tensor | None = None,
        key_dynamic: Tensor | None = None,
    ) -> Tensor:
        """Update ``x (B, Nx, C)`` given the other view ``y (B, Ny, C)``; returns the new ``x``."""
        x = x + self.attn(self.norm1(x), xpos)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(
            self.norm2(x), y_, y_, xpos, ypos, probe=probe, query_dynamic=query_dynamic, key_dynamic=key_dynamic
        )
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """16x16 patch embedding (``proj``) that keeps the image orientation (``PatchEmbedDust3R``).

    Portrait images are embedded as they are, on their true ``(H/16, W/16)`` grid: the official inference loaders use
    this class (``landscape_only=False``) and the training-time ``ManyAR_PatchEmbed`` computes the same tokens.
    """

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B, 3, H, W)`` -> tokens ``(B, N, C)`` and positions ``(B, N, 2)``."""
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        return tokens, grid_positions(h // p, w // p, b, images.device)


def check_head_dim(dim: int, heads: int) -> None:
    """Raise if ``dim`` does not split into RoPE-compatible heads (head dim divisible by 4)."""
    if dim % heads or (dim // heads) % 4:
        raise ValueError(f"embedding dim {dim} with {heads} heads gives head dim {dim / heads}, need a multiple of 4")
