"""The linear layer: a Dense that names every kernel dimension with a logical axis."""

from __future__ import annotations

from collections.abc import Sequence
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
