"""OLMo 2: post-norm blocks (`x + RMSNorm(Attn(x))`, `x + RMSNorm(MLP(x))`), q/k RMSNorm over
the whole projections, the RMSNorm weight applied before the cast to the compute dtype."""

from __future__ import annotations

import flax.linen as nn

from jimm_linen.layers.attention import Attention
from jimm_linen.layers.mlp import GatedMlpBlock
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.models.decoder import CausalLM, DecoderBlock
from jimm_linen.models.olmo2.config import Olmo2Config


class Olmo2Block(DecoderBlock):
    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        h, keys, values = Attention(
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            use_bias=cfg.attention_bias, out_bias=cfg.attention_bias, qk_norm="projection",
            norm_eps=cfg.rms_norm_eps, norm_order="scale_then_cast", attention_fn=self.attention_fn,
            attention_dropout=cfg.attention_dropout, kernel_init=self.kernel_init, name="self_attention", **kw,
        )(x, shared, own)
        x = x + RMSNorm(cfg.rms_norm_eps, "scale_then_cast", name="post_attention_norm", **kw)(h)
        h = GatedMlpBlock(cfg.intermediate_size, cfg.hidden_act, use_bias=False, kernel_init=self.kernel_init,
                          name="mlp", **kw)(x)
        x = x + RMSNorm(cfg.rms_norm_eps, "scale_then_cast", name="post_mlp_norm", **kw)(h)
        return self.out(x, keys, values)


class Olmo2(CausalLM):
    config: Olmo2Config
    block = Olmo2Block
