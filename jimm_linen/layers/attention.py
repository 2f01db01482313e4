"""Multi-head attention whose score computation is the pluggable `attention_fn`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.layers.attention_fns import dot_product_attention
from jimm_linen.layers.linear import DenseGeneral, default_kernel_init
from jimm_linen.layers.rope import apply_rotary
from jimm_linen.partitioning import constrain

ACT_HEADS = ("act_batch", "act_length", "act_heads", "act_kv")


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with kernels named `("embed", "heads", "kv")`.

    `qkv_bias`: one flag for the query, key and value projections, or a `(q, k, v)` tuple
    (DINOv3 has no key bias); `out_bias`: the output projection's. `rope=(cos, sin)` (each
    `[P, head_dim]`) rotates the queries and keys of the last `P` tokens (see `layers.rope`).
    """

    num_heads: int
    head_dim: int
    qkv_bias: bool | tuple[bool, bool, bool] = True
    out_bias: bool = True
    attention_fn: Any = None
    attention_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, mask=None, deterministic: bool = True,
                 is_causal: bool = False, rope=None):
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        embed = inputs_q.shape[-1]
        kernel_init = self.kernel_init or default_kernel_init()
        biases = self.qkv_bias if isinstance(self.qkv_bias, tuple) else (self.qkv_bias,) * 3

        def proj(name, x, use_bias):
            y = DenseGeneral(
                features=(self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
                use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=kernel_init, name=name,
            )(x)
            y = constrain(y, ACT_HEADS)
            return checkpoint_name(y, f"{name}_proj")

        q, k, v = (proj(name, x, b) for name, x, b in zip(("query", "key", "value"),
                                                          (inputs_q, inputs_kv, inputs_kv), biases))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if self.attention_dropout > 0.0 and not deterministic:
            if self.attention_fn is not None:
                raise ValueError(
                    "attention-probability dropout in training needs the default attention; "
                    "set attention_dropout=0 to train with a custom attention_fn"
                )
            out = dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        dropout_rate=self.attention_dropout,
                                        dropout_rng=self.make_rng("dropout"))
        else:
            attention_fn = self.attention_fn or dot_product_attention
            out = attention_fn(q, k, v, mask=mask, is_causal=is_causal)
        out = constrain(out, ACT_HEADS)
        out = DenseGeneral(
            features=embed, axis=(-2, -1), kernel_axes=("heads", "kv", "embed"), use_bias=self.out_bias,
            dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=kernel_init, name="out",
        )(out)
        return checkpoint_name(out, "out_proj")
