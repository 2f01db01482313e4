"""Mixtral: Mistral's attention half (Llama's block), then a mixture of SwiGLU experts in place
of the MLP; `MoeLM`, the router outputs and auxiliary loss every MoE family here shares."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers.moe import MoeBlock, load_balancing_loss, per_expert
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.models.decoder import CausalLM
from jimm_linen.models.llama.model import LlamaBlock
from jimm_linen.models.mixtral.config import MixtralConfig


class MixtralBlock(LlamaBlock):
    """`x + Attn(RMSNorm(x))`, then `x + MoE(RMSNorm(x))`: each token through its top
    `num_experts_per_tok` experts, weighted by their renormalised float32 router probabilities.
    The router logits go out as the layer's `aux`."""

    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        x, keys, values = self.attention(x, shared, own)
        h = RMSNorm(cfg.rms_norm_eps, cfg.norm_order, name="pre_mlp_norm", **kw)(x)
        if cfg.router_jitter_noise and not shared.deterministic:  # HF's: router and experts see the noise
            j = cfg.router_jitter_noise
            h = h * jax.random.uniform(self.make_rng("dropout"), h.shape, h.dtype, 1.0 - j, 1.0 + j)
        y, router_logits = MoeBlock(cfg.num_local_experts, cfg.num_experts_per_tok, cfg.intermediate_size,
                                    cfg.hidden_act, norm_topk_prob=True, implementation=cfg.moe_implementation,
                                    kernel_init=self.kernel_init, name="moe", **kw)(h)
        return self.out(x + y, keys, values, router_logits=router_logits)


class MoeLM(CausalLM):
    """A decoder whose MoE layers (`config.moe_layers()`) hand out `router_logits` as `aux`."""

    def decoding_variables(self, variables) -> dict:
        """Also each MoE layer's experts in buffers of their own (`layers.moe.per_expert`), so a
        decode step reads only the experts its tokens chose."""
        return per_expert(super().decoding_variables(variables), self.config.moe_implementation)

    def router_outputs(self, aux, attention_mask):
        moe = np.flatnonzero(self.config.moe_layers())
        if not len(moe):
            return (), jnp.zeros((), jnp.float32)
        logits = aux["router_logits"][moe]  # [moe layers, B, T, experts]
        return tuple(logits), load_balancing_loss(logits, self.config.num_experts_per_tok, attention_mask)

    def aux_loss(self, aux, attention_mask):
        cfg = self.config
        if not cfg.output_router_logits:  # HF adds the term to its labels= loss only then
            return None
        return cfg.router_aux_loss_coef * self.router_outputs(aux, attention_mask)[1]


class Mixtral(MoeLM):
    config: MixtralConfig
    block = MixtralBlock
