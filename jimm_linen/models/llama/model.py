"""Llama: pre-norm blocks of grouped-query attention with rotary embeddings and a SwiGLU MLP.
Qwen3 (per-head q/k norms, from its config), Mistral (a sliding window) and Gemma (RMSNorm
weights offset by one, a GELU gate) run this block; the mixture-of-experts blocks (Mixtral,
Qwen3-MoE) its attention half."""

from __future__ import annotations

import flax.linen as nn

from jimm_linen.layers.attention import Attention
from jimm_linen.layers.mlp import GatedMlpBlock
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.models.decoder import CausalLM, DecoderBlock
from jimm_linen.models.llama.config import LlamaConfig


class LlamaBlock(DecoderBlock):
    """`x + Attn(RMSNorm(x))`, then `x + MLP(RMSNorm(x))`."""

    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        x, keys, values = self.attention(x, shared, own)
        h = RMSNorm(cfg.rms_norm_eps, cfg.norm_order, offset=cfg.norm_offset, name="pre_mlp_norm", **kw)(x)
        x = x + GatedMlpBlock(cfg.intermediate_size, cfg.hidden_act, use_bias=cfg.mlp_bias,
                              kernel_init=self.kernel_init, name="mlp", **kw)(h)
        return self.out(x, keys, values)

    def attention(self, x, shared, own):
        """`(x + Attn(RMSNorm(x)), keys, values)`: the attention half (called from the compact
        `__call__`, so its modules are the block's own)."""
        cfg, kw = self.config, self.kw
        h = RMSNorm(cfg.rms_norm_eps, cfg.norm_order, offset=cfg.norm_offset, name="pre_attention_norm", **kw)(x)
        h, keys, values = Attention(
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            use_bias=cfg.attention_bias, out_bias=cfg.attention_bias, qk_norm=cfg.qk_norm,
            norm_eps=cfg.rms_norm_eps, norm_order=cfg.norm_order, norm_offset=cfg.norm_offset,
            attention_fn=self.attention_fn, attention_dropout=cfg.attention_dropout, kernel_init=self.kernel_init,
            name="self_attention", **kw,
        )(h, shared, own)
        return x + h, keys, values


class Llama(CausalLM):
    config: LlamaConfig
    block = LlamaBlock
