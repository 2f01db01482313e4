"""Patch embedding and learned position embeddings with PyTorch-exact resizing."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers.linear import default_kernel_init


def check_images(images: jax.Array, num_channels: int, patch_size: int) -> None:
    """Raise a clear error for anything that is not a batch of NHWC images the model can tile."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (batch, height, width, channels), got {images.shape}")
    if images.shape[-1] != num_channels:
        hint = ""
        if images.shape[1] == num_channels:
            hint = " (this looks like NCHW; jimm takes NHWC: transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"expected {num_channels} channels in the last dim of NHWC images, got shape "
            f"{images.shape}{hint}"
        )
    h, w = images.shape[1:3]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch_size}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"expected float images (normalised pixel values), got dtype {images.dtype}")


class PatchEmbedding(nn.Module):
    """Non-overlapping `patch_size` convolution written as a reshape and one matmul."""

    patch_size: int
    hidden_size: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        b, h, w, c = images.shape
        kernel = self.param(
            "kernel",
            # Distinct names per dim: Flax's logical_to_mesh_axes (and so `unbox` under a mesh)
            # rejects a name that occurs twice in one array.
            nn.with_logical_partitioning(self.kernel_init or default_kernel_init(),
                                         ("patch_height", "patch_width", "channels", "embed")),
            (p, p, c, self.hidden_size), self.param_dtype,
        )
        images, kernel = nn.dtypes.promote_dtype(images, kernel, dtype=self.dtype)
        patches = images.reshape(b, h // p, p, w // p, p, c)
        y = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                              (self.hidden_size,), self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """The (out, in) matrix of `torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False, antialias=antialias)` along one axis, with `size=` given.

    Without antialiasing PyTorch uses the cubic convolution kernel with a = -0.75, source
    index `(dst + 0.5) * in/out - 0.5` (not clamped for cubic) and border-replicated taps. With
    it (PIL's filter): a = -0.5, the kernel stretched by `in/out` when shrinking, taps that
    fall outside the input dropped and each row's weights renormalised to sum to 1.
    `jax.image.resize` matches neither.
    """
    m = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    if antialias:
        support = 2.0 * max(scale, 1.0)
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        for dst in range(out_size):
            center = scale * (dst + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), in_size)
            taps = np.array([_cubic((j - center + 0.5) * inv, -0.5) for j in range(lo, hi)])
            m[dst, lo:hi] = taps / taps.sum()
        return m
    for dst in range(out_size):
        src = (dst + 0.5) * scale - 0.5
        i0 = int(np.floor(src))
        t = src - i0
        for k, wgt in enumerate(_cubic(d, -0.75) for d in (t + 1, t, 1 - t, 2 - t)):
            m[dst, min(max(i0 - 1 + k, 0), in_size - 1)] += wgt
    return m


def _cubic(t: float, a: float) -> float:
    """Keys' cubic convolution kernel with parameter `a`."""
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0


def position_embedding(module: nn.Module, gh: int, gw: int, interpolate: bool, init, n_prefix: int,
                       antialias: bool = False) -> jax.Array:
    """`module`'s learned position table `pos_embedding` `[1, n_prefix + g*g, embed]` (made
    here, inside its compact method) for a `gh x gw` patch grid: as stored at the config's
    resolution; else, with `interpolate`, the grid part resized by PyTorch's bicubic (the
    `n_prefix` class-token rows kept), and without it an error naming the sizes."""
    cfg = module.config
    pos = module.param("pos_embedding", nn.with_logical_partitioning(init, (None, "length", "embed")),
                       (1, cfg.num_positions, cfg.hidden_size), module.param_dtype)
    g = cfg.grid_size
    if (gh, gw) == (g, g):
        return pos
    if not interpolate:
        raise ValueError(
            f"input is {gh * cfg.patch_size}x{gw * cfg.patch_size} but the model was built for "
            f"{cfg.image_size}x{cfg.image_size}; pass interpolate_pos_encoding=True to resize "
            f"the position embeddings")
    grid = pos[0, n_prefix:].reshape(g, g, cfg.hidden_size)
    resized = resize_position_grid(grid, (gh, gw), antialias).reshape(1, gh * gw, cfg.hidden_size)
    return jnp.concatenate([pos[:, :n_prefix], resized], axis=1)


def resize_position_grid(grid: jax.Array, new_hw: tuple[int, int], antialias: bool = False) -> jax.Array:
    """Bicubically resize a `(h, w, d)` grid of position embeddings exactly as HF/PyTorch do
    (`antialias` as `torch.nn.functional.interpolate`'s)."""
    h, w, _ = grid.shape
    mh = jnp.asarray(torch_bicubic_matrix(h, new_hw[0], antialias), jnp.float32)
    mw = jnp.asarray(torch_bicubic_matrix(w, new_hw[1], antialias), jnp.float32)
    # Width first, then height: the order PyTorch's separable kernel sums in. Always in float32
    # (bf16 would round the weights), cast back at the end.
    tmp = jnp.einsum("bw,hwd->hbd", mw, grid.astype(jnp.float32), precision="highest")
    return jnp.einsum("ah,hbd->abd", mh, tmp, precision="highest").astype(grid.dtype)


class Embed(nn.Module):
    """A token embedding table `[vocab, embed]`; `attend(x)` is the tied output projection
    (`x . table^T`, accumulated and returned in float32)."""

    num_embeddings: int
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Any = None

    def setup(self):
        init = self.embedding_init or nn.initializers.normal(0.02)
        self.embedding = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
                                    (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype or self.param_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = self.embedding.astype(self.dtype or x.dtype)
        return jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32)
