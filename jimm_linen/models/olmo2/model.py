"""OLMo 2: post-norm blocks (`x + RMSNorm(Attn(x))`, `x + RMSNorm(MLP(x))`), q/k RMSNorm over
the whole projections (its config sets `qk_norm="projection"`)."""

from __future__ import annotations

import flax.linen as nn

from jimm_linen.models.causal_lm import Block, CausalLM
from jimm_linen.models.olmo2.config import Olmo2Config


class Olmo2Block(Block):
    @nn.compact
    def __call__(self, x, mask, rotary, is_causal, deterministic, index, *kv):
        y, kv = self.attend(x, mask, rotary, is_causal, deterministic, index, kv)
        x = x + self.norm("post_attention_norm")(y)
        x = x + self.norm("post_mlp_norm")(self.mlp(x))
        return self.out(x, kv)


class Olmo2(CausalLM):
    config: Olmo2Config
    block = Olmo2Block
