"""The pre-LayerNorm transformer encoder of the vision and text towers.

Blocks read their tower config (`ViTConfig`, `TextConfig`): `num_attention_heads`,
`intermediate_size`, `hidden_act`, `layer_norm_eps`, `qkv_bias`, `hidden_dropout_prob`,
`attention_probs_dropout_prob`, `causal` and `initializer_range`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.mlp import MlpBlock
from jimm_linen.layers.norm import LayerNorm
from jimm_linen.layers.stack import Stacked, stack
from jimm_linen.partitioning import constrain

ACT_EMBED = ("act_batch", "act_length", "act_embed")


class EncoderBlock(nn.Module):
    """`x + Attn(LN(x))`, then `x + MLP(LN(x))`; returns `(x, x if collect else None)` to be scannable."""

    config: Any
    attention_fn: Any = None
    collect: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = default_kernel_init(cfg.initializer_range)
        y = LayerNorm(cfg.layer_norm_eps, name="LayerNorm_0", **kw)(x)
        y = MultiHeadAttention(
            num_heads=cfg.num_attention_heads, head_dim=x.shape[-1] // cfg.num_attention_heads,
            qkv_bias=cfg.qkv_bias, attention_fn=self.attention_fn,
            attention_dropout=cfg.attention_probs_dropout_prob, kernel_init=init,
            name="MultiHeadDotProductAttention_0", **kw,
        )(y, None, mask, deterministic, cfg.causal)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic)
        x = constrain(x + y, ACT_EMBED)
        y = LayerNorm(cfg.layer_norm_eps, name="LayerNorm_1", **kw)(x)
        y = MlpBlock(cfg.intermediate_size, cfg.hidden_act, kernel_init=init, name="MlpBlock_0", **kw)(y)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic)
        x = constrain(x + y, ACT_EMBED)
        return x, (x if self.collect else None)


class Encoder(Stacked):
    """`num_hidden_layers` EncoderBlocks (stacked as `encoderblock`, see `layers.stack`) and the
    final LayerNorm `encoder_norm`. Returns `(x, hidden_states)`: `hidden_states` is None
    unless `return_hidden_states`, then a tuple of every block's output (before `encoder_norm`).
    """

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, return_hidden_states: bool = False):
        cfg = self.config
        blocks = stack(EncoderBlock, length=cfg.num_hidden_layers, name="encoderblock", scan=self.scan,
                       remat=self.remat_policy, num_broadcast=2, static_argnums=(1,), config=cfg,
                       attention_fn=self.attention_fn, collect=return_hidden_states, dtype=self.dtype,
                       param_dtype=self.param_dtype)
        x, per_layer = blocks(x, mask, deterministic)
        hidden_states = tuple(per_layer) if return_hidden_states else None
        x = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)
        return x, hidden_states
