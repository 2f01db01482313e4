"""Normalisation layers with statistics in float32 and stated derivatives."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


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


def _rstd(x, epsilon):
    return lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + epsilon)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def rms_normalize(x: jax.Array, epsilon: float) -> jax.Array:
    """`x / sqrt(mean(x^2) + epsilon)` over the last axis.

    Stated derivative `rstd * (t - y * mean(y * t))`: the backward pass keeps the output and
    the reciprocal deviation, not the squares and the mean of the traced form.
    """
    return x * _rstd(x, epsilon)


@rms_normalize.defjvp
def _rms_normalize_jvp(epsilon, primals, tangents):
    rstd = _rstd(primals[0], epsilon)
    y = primals[0] * rstd
    t = tangents[0]
    return y, rstd * (t - y * jnp.mean(y * t, axis=-1, keepdims=True))


# Where HF casts back to the compute dtype, per family: Llama / Qwen3 / Mistral multiply the
# weight by the normalised input already cast (`w * x.to(dtype)`), OLMo 2 and Gemma cast the
# product (`(w * x).to(dtype)`, Gemma's `w` being `1 + weight`). Identical in float32, not in
# bfloat16.
RMS_ORDERS = ("cast_then_scale", "scale_then_cast")


class RMSNorm(nn.Module):
    """RMSNorm with float32 statistics; `order` is one of `RMS_ORDERS` (see there).

    `offset`: the stored weight is the scale minus `offset`, added back in float32 (Gemma's
    `1 + w`, whose checkpoints store `w` and initialise it to zeros)."""

    epsilon: float
    order: str = "cast_then_scale"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = "embed"
    offset: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.order not in RMS_ORDERS:
            raise ValueError(f"unknown RMSNorm order {self.order!r}; known: {RMS_ORDERS}")
        init = nn.initializers.constant(1.0 - self.offset)
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],),
                           self.param_dtype)
        if self.offset:
            scale = scale.astype(jnp.float32) + self.offset
        dtype = self.dtype or x.dtype
        y = rms_normalize(x.astype(jnp.float32), self.epsilon)
        if self.order == "cast_then_scale":
            return scale.astype(dtype) * y.astype(dtype)
        return (scale.astype(jnp.float32) * y).astype(dtype)
