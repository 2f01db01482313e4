"""Dense and LayerNorm that name every parameter dimension with a logical axis."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
LogicalNames = tuple[str | None, ...]


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, Sequence) else (x,)


def default_kernel_init(stddev: float = 0.02):
    # HF initialises every Linear/Conv of these models with N(0, initializer_range), truncated.
    return nn.initializers.truncated_normal(stddev)


class DenseGeneral(nn.Module):
    """`y = x . kernel + bias`, contracting `axis` of `x` with the kernel's leading dims.

    Unlike `flax.linen.DenseGeneral`, the kernel is created at its full N-D shape, so
    `kernel_axes` names every dimension (e.g. `("embed", "heads", "kv")`).
    """

    features: int | Sequence[int]
    kernel_axes: LogicalNames
    axis: int | Sequence[int] = -1
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = None
    bias_init: Any = nn.initializers.zeros_init()
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = _as_tuple(self.features)
        axis = tuple(a % x.ndim for a in _as_tuple(self.axis))
        # dot_general puts the kept input dims first, so only trailing axes keep the layout.
        if axis != tuple(range(x.ndim - len(axis), x.ndim)):
            raise ValueError(f"{self.name}: only trailing axes can be contracted, got {axis}")
        kernel_shape = tuple(x.shape[a] for a in axis) + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(
                f"{self.name}: kernel_axes {self.kernel_axes} name {len(self.kernel_axes)} dims, "
                f"the kernel has shape {kernel_shape}"
            )
        kernel_init = self.kernel_init or default_kernel_init()
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(kernel_init, self.kernel_axes),
            kernel_shape, self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(self.bias_init, self.kernel_axes[len(axis):]),
                features, self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        contract = (axis, tuple(range(len(axis))))
        y = lax.dot_general(x, kernel, (contract, ((), ())), precision=self.precision)
        if bias is not None:
            y = y + bias
        return y


def _centered_rstd(x, epsilon):
    centered = x - x.mean(-1, keepdims=True)
    return centered, lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def standardize(x: jax.Array, epsilon: float) -> jax.Array:
    """`(x - mean) / sqrt(var + epsilon)` over the last axis, variance in two passes.

    The stated derivative keeps only the output and the reciprocal deviation for the backward
    pass; traced through, it keeps the centred input as well, one more activation-sized tensor
    per LayerNorm.
    """
    centered, rstd = _centered_rstd(x, epsilon)
    return centered * rstd


@standardize.defjvp
def _standardize_jvp(epsilon, primals, tangents):
    centered, rstd = _centered_rstd(primals[0], epsilon)
    y = centered * rstd
    t = tangents[0]
    t = t - t.mean(-1, keepdims=True)
    return y, rstd * (t - y * jnp.mean(y * t, axis=-1, keepdims=True))


class LayerNorm(nn.Module):
    """LayerNorm with the exact (two-pass) variance and statistics in float32.

    `flax.linen.LayerNorm` defaults to `E[x^2] - E[x]^2`, which is not what PyTorch computes
    and loses digits; parity needs the two-pass form.
    """

    epsilon: float
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
            (d,), self.param_dtype,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
            (d,), self.param_dtype,
        )
        y = standardize(x.astype(jnp.float32), self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype or x.dtype)
