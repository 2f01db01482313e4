"""Rotary position embeddings: the rotation (HF's `rotate_half` form) and DINOv3's 2-D patch
frequencies."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the last `P` tokens of `x` `[B, T, N, H]` by `cos`, `sin` `[P, H]`; the `T - P`
    tokens before them (a class token, registers) are left as they are."""
    p = cos.shape[0]
    prefix, tokens = x[:, : x.shape[1] - p], x[:, x.shape[1] - p:]
    cos, sin = (a.astype(x.dtype)[None, :, None, :] for a in (cos, sin))
    return jnp.concatenate([prefix, tokens * cos + rotate_half(tokens) * sin], axis=1)


def patch_centers(grid_h: int, grid_w: int) -> np.ndarray:
    """`(grid_h * grid_w, 2)` float32 `(y, x)` patch centres in [-1, 1], row-major, as HF's
    `get_patches_center_coordinates` computes them."""
    ys = np.arange(0.5, grid_h, dtype=np.float32) / np.float32(grid_h)
    xs = np.arange(0.5, grid_w, dtype=np.float32) / np.float32(grid_w)
    coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.float32(2.0) * coords - np.float32(1.0)


def patch_rope(coords: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """`(cos, sin)`, each `[P, head_dim]` float32, for patch coordinates `[P, 2]`
    (HF `DINOv3ViTRopePositionEmbedding`): `head_dim / 4` frequencies per axis, the y angles
    then the x angles, the whole repeated twice to pair with `rotate_half`."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head_dim divisible by 4, got {head_dim}")
    # HF: 1 / theta ** torch.arange(0, 1, 4 / head_dim) in float32.
    exponents = (np.arange(head_dim // 4, dtype=np.float64) * (4 / head_dim)).astype(np.float32)
    inv_freq = np.float32(1) / np.power(np.float32(theta), exponents)
    angles = np.float32(2 * math.pi) * coords[:, :, None] * inv_freq[None, None, :]
    angles = jnp.tile(angles.reshape(angles.shape[0], -1), (1, 2))
    return jnp.cos(angles), jnp.sin(angles)
