"""Llama: pre-norm blocks of grouped-query attention with rotary embeddings and a SwiGLU MLP.
Qwen3 runs the same block with per-head q/k norms (its config sets `qk_norm`)."""

from __future__ import annotations

import flax.linen as nn

from jimm_linen.models.causal_lm import Block, CausalLM
from jimm_linen.models.llama.config import LlamaConfig


class LlamaBlock(Block):
    """`x + Attn(RMSNorm(x))`, then `x + MLP(RMSNorm(x))`."""

    @nn.compact
    def __call__(self, x, mask, rotary, is_causal, deterministic, index, *kv):
        y, kv = self.attend(self.norm("pre_attention_norm")(x), mask, rotary, is_causal, deterministic, index, kv)
        x = x + y
        x = x + self.mlp(self.norm("pre_mlp_norm")(x))
        return self.out(x, kv)


class Llama(CausalLM):
    config: LlamaConfig
    block = LlamaBlock
