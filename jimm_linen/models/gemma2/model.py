"""Gemma 2: Gemma's embeddings and RMSNorm (`1 + w`) around both halves of each block, attention
scaled by `query_pre_attn_scalar ** -0.5` with soft-capped logits, sliding-window layers by
kind, and soft-capped output logits. Gemma 3 runs this block: q/k norms (`qk_norm`), RoPE per
layer kind (`rope_for`) and its `layer_types` come from its config."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.layers.attention import Attention
from jimm_linen.layers.mlp import GatedMlpBlock
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.models.decoder import DecoderBlock
from jimm_linen.models.gemma.model import Gemma
from jimm_linen.models.gemma2.config import Gemma2Config


class Gemma2Block(DecoderBlock):
    """`x + RMSNorm(Attn(RMSNorm(x)))`, then `x + RMSNorm(MLP(RMSNorm(x)))`."""

    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        norm = functools.partial(RMSNorm, cfg.rms_norm_eps, cfg.norm_order, offset=cfg.norm_offset, **kw)
        h, keys, values = Attention(
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            use_bias=cfg.attention_bias, out_bias=cfg.attention_bias, qk_norm=cfg.qk_norm,
            norm_eps=cfg.rms_norm_eps, norm_order=cfg.norm_order, norm_offset=cfg.norm_offset,
            scale=cfg.query_pre_attn_scalar ** -0.5, logits_soft_cap=cfg.attn_logit_softcapping,
            attention_fn=self.attention_fn, attention_dropout=cfg.attention_dropout, kernel_init=self.kernel_init,
            name="self_attention", **kw,
        )(norm(name="pre_attention_norm")(x), shared, own)
        x = x + norm(name="post_attention_norm")(h)
        h = GatedMlpBlock(cfg.intermediate_size, cfg.hidden_activation, use_bias=False, kernel_init=self.kernel_init,
                          name="mlp", **kw)(norm(name="pre_mlp_norm")(x))
        x = x + norm(name="post_mlp_norm")(h)
        return self.out(x, keys, values)


class Gemma2(Gemma):
    config: Gemma2Config
    block = Gemma2Block

    def logits(self, h):
        logits = super().logits(h)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else cap * jnp.tanh(logits / cap)
