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
    """A learned probe attends over the tokens, then a residual MLP; returns `[B, D]`. Sizes
    come from the tower config: `num_attention_heads`, `intermediate_size`, `hidden_act`,
    `layer_norm_eps`, `initializer_range`."""

    config: Any
    attention_fn: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, _, d = x.shape
        init = default_kernel_init(cfg.initializer_range)
        probe = self.param("probe", nn.with_logical_partitioning(init, (None, None, "embed")), (1, 1, d),
                           self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(self.dtype or x.dtype), (b, 1, d))
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads = cfg.num_attention_heads
        x = MultiHeadAttention(num_heads=heads, head_dim=d // heads, attention_fn=self.attention_fn,
                               kernel_init=init, name="MultiHeadDotProductAttention_0", **kw)(probe, x)
        y = LayerNorm(cfg.layer_norm_eps, name="LayerNorm_0", **kw)(x)
        x = x + MlpBlock(cfg.intermediate_size, cfg.hidden_act, kernel_init=init, name="MlpBlock_0", **kw)(y)
        return x[:, 0]
