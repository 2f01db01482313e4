"""The pre-LayerNorm transformer encoder of the vision and text towers.

Blocks read their tower config (`ViTConfig`, `TextConfig`, `DINOv2Config`, ...):
`num_attention_heads`, `intermediate_size`, `hidden_act`, `layer_norm_eps`, `qkv_bias`,
`hidden_dropout_prob`, `attention_probs_dropout_prob`, `causal` and `initializer_range`, and
the options in `BLOCK_OPTIONS` where the config has them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.mlp import GatedMlpBlock, MlpBlock
from jimm_linen.layers.norm import LayerNorm
from jimm_linen.layers.stack import Block, Stacked, stack
from jimm_linen.partitioning import constrain

ACT_EMBED = ("act_batch", "act_length", "act_embed")

# What a tower config may set beyond the fields every block reads, and the value a config
# without it gets (ViTConfig and TextConfig set none of them; the DINO configs do).
BLOCK_OPTIONS: dict[str, Any] = dict(
    layer_scale=False,  # a learned per-channel scale on each branch (`LayerScale_0/1`), from `layerscale_value`
    mlp_gated=False,  # `GatedMlpBlock` (SwiGLU) instead of `MlpBlock`
    mlp_act=None,  # the MLP's activation where it is not `hidden_act` (DINOv2's SwiGLU is always SiLU)
    mlp_bias=True,
    out_bias=True,  # the attention output projection's bias
    drop_path_rate=0.0,  # stochastic depth on both branches, in training only
    block_dropout_prob=None,  # dropout on both branches; None: `hidden_dropout_prob`
)


def block_option(cfg, name: str):
    return getattr(cfg, name, BLOCK_OPTIONS[name])


class LayerScale(nn.Module):
    """`x * scale`, one learned factor per channel (CaiT / DINO's LayerScale)."""

    init_value: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.constant(self.init_value), ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        return x * scale.astype(x.dtype)


def drop_path(module: nn.Module, x, rate: float, deterministic: bool):
    """Stochastic depth as HF's `DropPath`: drop the whole branch per sample with probability
    `rate`, scaling the kept ones by `1 / (1 - rate)`."""
    if deterministic or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


@flax.struct.dataclass
class EncoderInputs:
    """What every encoder block sees: the attention `mask`, the rotary `(cos, sin)` or None."""

    mask: Any = None
    rope: Any = None
    deterministic: bool = flax.struct.field(pytree_node=False, default=True)


class EncoderBlock(Block):
    """`x + Attn(LN(x))`, then `x + MLP(LN(x))`; returns `(x, x if collect else None)` to be scannable."""

    @nn.compact
    def __call__(self, x, shared: EncoderInputs, own=None):
        cfg, mask, deterministic, rope = self.config, shared.mask, shared.deterministic, shared.rope
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = default_kernel_init(cfg.initializer_range)
        dropout = block_option(cfg, "block_dropout_prob")
        dropout = cfg.hidden_dropout_prob if dropout is None else dropout
        path_rate = block_option(cfg, "drop_path_rate")

        def branch_end(y, i):
            if block_option(cfg, "layer_scale"):
                y = LayerScale(cfg.layerscale_value, param_dtype=self.param_dtype, name=f"LayerScale_{i}")(y)
            y = nn.Dropout(dropout)(y, deterministic)
            return drop_path(self, y, path_rate, deterministic)

        y = LayerNorm(cfg.layer_norm_eps, name="LayerNorm_0", **kw)(x)
        y = MultiHeadAttention(
            num_heads=cfg.num_attention_heads, head_dim=x.shape[-1] // cfg.num_attention_heads,
            qkv_bias=cfg.qkv_bias, out_bias=block_option(cfg, "out_bias"), attention_fn=self.attention_fn,
            attention_dropout=cfg.attention_probs_dropout_prob, kernel_init=init,
            name="MultiHeadDotProductAttention_0", **kw,
        )(y, None, mask, deterministic, cfg.causal, rope)
        x = constrain(x + branch_end(y, 0), ACT_EMBED)
        y = LayerNorm(cfg.layer_norm_eps, name="LayerNorm_1", **kw)(x)
        mlp_cls = GatedMlpBlock if block_option(cfg, "mlp_gated") else MlpBlock
        y = mlp_cls(cfg.intermediate_size, block_option(cfg, "mlp_act") or cfg.hidden_act,
                    use_bias=block_option(cfg, "mlp_bias"), kernel_init=init, name="MlpBlock_0", **kw)(y)
        x = constrain(x + branch_end(y, 1), ACT_EMBED)
        return x, (x if self.collect else None)


class Encoder(Stacked):
    """`num_hidden_layers` EncoderBlocks (stacked as `encoderblock`, see `layers.stack`) and the
    final LayerNorm `encoder_norm`. Returns `(x, hidden_states)`: `hidden_states` is None
    unless `return_hidden_states`, then a tuple of every block's output (before `encoder_norm`).
    `rope=(cos, sin)` rotates the queries and keys of the last tokens in every block.
    """

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, return_hidden_states: bool = False, rope=None):
        cfg = self.config
        blocks = stack(EncoderBlock, length=cfg.num_hidden_layers, name="encoderblock", scan=self.scan,
                       remat=self.remat_policy, config=cfg, attention_fn=self.attention_fn,
                       collect=return_hidden_states, dtype=self.dtype, param_dtype=self.param_dtype)
        x, per_layer = blocks(x, EncoderInputs(mask, rope, deterministic))
        hidden_states = tuple(per_layer) if return_hidden_states else None
        x = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)
        return x, hidden_states
