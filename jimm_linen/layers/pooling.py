"""Attention pooling (the MAP head of big_vision / SigLIP)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.norm import LayerNorm
from jimm_linen.layers.mlp import MlpBlock


class MAPHead(nn.Module):
    """A learned probe attends over the tokens, then a residual MLP; returns `[B, D]`."""

    num_heads: int
    mlp_dim: int
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_fn: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x):
        b, _, d = x.shape
        probe = self.param(
            "probe", nn.with_logical_partitioning(self.kernel_init or default_kernel_init(),
                                                  (None, None, "embed")),
            (1, 1, d), self.param_dtype,
        )
        probe = jnp.broadcast_to(probe.astype(self.dtype or x.dtype), (b, 1, d))
        x = MultiHeadAttention(
            num_heads=self.num_heads, head_dim=d // self.num_heads, attention_fn=self.attention_fn,
            dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
            name="MultiHeadDotProductAttention_0",
        )(probe, x)
        y = LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="LayerNorm_0")(x)
        x = x + MlpBlock(self.mlp_dim, self.hidden_act, dtype=self.dtype,
                         param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                         name="MlpBlock_0")(y)
        return x[:, 0]
