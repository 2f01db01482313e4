"""Qwen3-MoE: Qwen3's attention half (Llama's block, per-head q/k RMSNorm), then a mixture of
SwiGLU experts, or Qwen3's dense MLP in the layers its config keeps dense."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.layers.moe import MoeBlock
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.models.llama.model import LlamaBlock
from jimm_linen.models.mixtral.model import MoeLM
from jimm_linen.models.qwen3_moe.config import Qwen3MoeConfig


class Qwen3MoeBlock(LlamaBlock):
    """`x + Attn(RMSNorm(x))`, then `x + MoE(RMSNorm(x))`: each token through its top
    `num_experts_per_tok` experts, their router probabilities renormalised when
    `norm_topk_prob` and rounded to the compute dtype before the mix (HF's order). The router
    logits go out as the layer's `aux`."""

    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        x, keys, values = self.attention(x, shared, own)
        h = RMSNorm(cfg.rms_norm_eps, cfg.norm_order, name="pre_mlp_norm", **kw)(x)
        y, router_logits = MoeBlock(cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.hidden_act,
                                    norm_topk_prob=cfg.norm_topk_prob, weights_in_compute_dtype=True,
                                    implementation=cfg.moe_implementation, kernel_init=self.kernel_init, name="moe",
                                    **kw)(h)
        return self.out(x + y, keys, values, router_logits=router_logits)


class Qwen3MoeDenseBlock(LlamaBlock):
    """Qwen3's dense block (an MLP of `intermediate_size`), where the config keeps a layer
    dense. It has no router: its router logits are zeros, which `router_outputs` leaves out,
    so that every layer's outputs stack alike."""

    @nn.compact
    def __call__(self, x, shared, own):
        x, out = super().__call__(x, shared, own)
        return x, out.replace(aux={"router_logits": jnp.zeros((*x.shape[:2], self.config.num_experts), x.dtype)})


class Qwen3Moe(MoeLM):
    config: Qwen3MoeConfig
    block = Qwen3MoeBlock

    def blocks(self):
        return tuple(Qwen3MoeBlock if moe else Qwen3MoeDenseBlock for moe in self.config.moe_layers())
