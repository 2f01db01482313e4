"""GPT-2: pre-LayerNorm blocks of multi-head attention and a GELU MLP (biases everywhere, dropout
on both residual branches), learned absolute positions added to the token embeddings, a final
LayerNorm and the head tied to the token table. No rotary embeddings."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers.attention import Attention
from jimm_linen.layers.embed import Embed
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.mlp import MlpBlock
from jimm_linen.layers.norm import LayerNorm
from jimm_linen.models.decoder import CausalLM, DecoderBlock
from jimm_linen.models.gpt2.config import GPT2Config


def attention_scale(config: GPT2Config, layer) -> float | jax.Array:
    """Layer `layer`'s attention scale: a Python float where the layer is known (or all layers
    share one), HF's value rounded to float32 where it is traced (under scan)."""
    scales = config.attention_scales
    if len(set(scales)) == 1:
        return scales[0]
    if layer is None:
        raise ValueError("scale_attn_by_inverse_layer_idx needs each block's layer index (block_inputs.Own.layer)")
    if isinstance(layer, (int, np.integer)):
        return scales[int(layer)]
    return jnp.asarray(scales, jnp.float32)[layer]


class GPT2Block(DecoderBlock):
    """`x + Drop(Attn(LN(x)))`, then `x + Drop(MLP(LN(x)))`: HF's `ln_1`, `attn`, `ln_2`, `mlp`."""

    @property
    def out_kernel_init(self):
        """HF's init of both `c_proj`s (the GPT-2 paper's): the residual branches' last kernels
        scaled by 1 / sqrt(2 * n_layer)."""
        return default_kernel_init(self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers))

    @nn.compact
    def __call__(self, x, shared, own):
        cfg, kw = self.config, self.kw
        h = LayerNorm(cfg.layer_norm_epsilon, name="pre_attention_norm", **kw)(x)
        h, keys, values = Attention(
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_attention_heads, head_dim=cfg.head_dim,
            use_bias=True, out_bias=True, scale=attention_scale(cfg, own.layer), attention_fn=self.attention_fn,
            attention_dropout=cfg.attn_pdrop, kernel_init=self.kernel_init, out_kernel_init=self.out_kernel_init,
            name="self_attention", **kw,
        )(h, shared, own)
        x = x + nn.Dropout(cfg.resid_pdrop, name="attention_dropout")(h, deterministic=shared.deterministic)
        h = LayerNorm(cfg.layer_norm_epsilon, name="pre_mlp_norm", **kw)(x)
        h = MlpBlock(cfg.intermediate_size, cfg.activation_function, use_bias=True, kernel_init=self.kernel_init,
                     out_kernel_init=self.out_kernel_init, name="mlp", **kw)(h)
        x = x + nn.Dropout(cfg.resid_pdrop, name="mlp_dropout")(h, deterministic=shared.deterministic)
        return self.out(x, keys, values)


def check_positions(positions, n_positions: int) -> None:
    """Positions outside the learned table are an error where they are concrete. Traced (inside
    `jit`) they cannot be checked: their embedding is NaN (`jnp.take`'s fill), never another
    position's, and the NaN spreads over that sequence's outputs (zero probabilities times NaN
    values), not the batch's other rows. Generation refuses a prompt + `max_new_tokens` past
    `n_positions` before it runs."""
    if isinstance(positions, jax.core.Tracer) or not positions.size:
        return
    pos = np.asarray(positions)
    lo, hi = int(pos.min()), int(pos.max())
    if lo < 0 or hi >= n_positions:
        raise ValueError(f"positions must lie in [0, {n_positions}) (GPT-2 learns n_positions={n_positions} "
                         f"position embeddings); got positions from {lo} to {hi}")


class GPT2(CausalLM):
    """HF `GPT2LMHeadModel`: `token_embedder` + `position_embedder` (HF's `wte`, `wpe`), the
    blocks, `decoder_norm` (`ln_f`), the tied (or untied) head."""

    config: GPT2Config
    block = GPT2Block

    def setup(self):
        super().setup()
        cfg = self.config
        self.position_embedder = Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype,
                                       param_dtype=self.param_dtype,
                                       embedding_init=nn.initializers.normal(cfg.initializer_range))
        self.embedding_dropout = nn.Dropout(cfg.embd_pdrop)

    def final_norm(self) -> functools.partial:
        return functools.partial(LayerNorm, self.config.layer_norm_epsilon, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

    def embed(self, input_ids, positions):
        check_positions(positions, self.config.max_position_embeddings)
        return self.token_embedder(input_ids) + self.position_embedder(positions)

    def embed_dropout(self, x, deterministic: bool):
        return self.embedding_dropout(x, deterministic=deterministic)
