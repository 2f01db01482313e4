"""Multi-head attention whose score computation is the pluggable `attention_fn`: the encoders'
self- and cross-attention, and the decoders' grouped-query attention with q/k RMSNorm, rotary
embeddings and a KV cache, in one module."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.layers.attention_fns import dot_product_attention
from jimm_linen.layers.linear import DenseGeneral, default_kernel_init
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.layers.rope import apply_rotary
from jimm_linen.partitioning import constrain

ACT_HEADS = ("act_batch", "act_length", "act_heads", "act_kv")


QK_NORMS = (None, "head", "projection")


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with kernels named `("embed", "heads", "kv")`.

    `qkv_bias`: one flag for the query, key and value projections, or a `(q, k, v)` tuple
    (DINOv3 has no key bias); `out_bias`: the output projection's. Decoder options:
    `num_kv_heads` key/value heads shared by groups of query heads (kernels named `kv_heads`);
    `qk_norm` "head" (an RMSNorm over each head's dims, Qwen3) or "projection" (over the whole
    query / key projection, OLMo 2), before the rotary embedding.
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
    num_kv_heads: int | None = None
    qk_norm: str | None = None
    norm_eps: float = 1e-6
    norm_order: str = "cast_then_scale"

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, mask=None, deterministic: bool = True,
                 is_causal: bool = False, rotary=None, cache=None):
        """`rotary`: `(cos, sin)` rotating queries and keys (see `layers.rope.apply_rotary`:
        `[B, T, head_dim]` per token, or `[P, head_dim]` for the last `P` tokens). `cache`:
        `(keys, values, index)` with `[B, L, K, head_dim]` buffers; the new keys and values are
        written at `index` and the queries attend over the whole buffer under `mask`
        (`[B, 1, T, L]`); then the call returns `(out, (keys, values))`."""
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        embed = inputs_q.shape[-1]
        kernel_init = self.kernel_init or default_kernel_init()
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}; known: {QK_NORMS}")
        grouped = self.num_kv_heads is not None
        kv_heads = self.num_kv_heads if grouped else self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_key_value_heads {kv_heads} does not divide num_attention_heads {self.num_heads}")
        biases = self.qkv_bias if isinstance(self.qkv_bias, tuple) else (self.qkv_bias,) * 3

        def proj(name, x, heads, heads_axis, use_bias):
            y = DenseGeneral(
                features=(heads, self.head_dim), kernel_axes=("embed", heads_axis, "kv"),
                use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=kernel_init, name=name,
            )(x)
            y = constrain(y, ("act_batch", "act_length", f"act_{heads_axis}", "act_kv"))
            return checkpoint_name(y, f"{name}_proj")

        kv_axis = "kv_heads" if grouped else "heads"
        q = proj("query", inputs_q, self.num_heads, "heads", biases[0])
        k = proj("key", inputs_kv, kv_heads, kv_axis, biases[1])
        v = proj("value", inputs_kv, kv_heads, kv_axis, biases[2])
        if self.qk_norm:
            q, k = self._norm("query_norm", q), self._norm("key_norm", k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            keys, values, index = cache
            k = lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), index, axis=1)
            v = lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), index, axis=1)
            k = constrain(k, ("cache_batch", "cache_length", "cache_kv_heads", "cache_kv"))
            v = constrain(v, ("cache_batch", "cache_length", "cache_kv_heads", "cache_kv"))
        if self.attention_dropout > 0.0 and not deterministic:
            if self.attention_fn is not None:
                raise ValueError(
                    "attention-probability dropout in training needs the default attention; "
                    "set attention_dropout=0 to train with a custom attention_fn"
                )
            out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, is_causal=is_causal,
                                        dropout_rate=self.attention_dropout,
                                        dropout_rng=self.make_rng("dropout"))
        else:
            attention_fn = self.attention_fn or dot_product_attention
            out = attention_fn(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, is_causal=is_causal)
        out = constrain(out, ACT_HEADS)
        out = DenseGeneral(
            features=embed, axis=(-2, -1), kernel_axes=("heads", "kv", "embed"), use_bias=self.out_bias,
            dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=kernel_init, name="out",
        )(out)
        out = checkpoint_name(out, "out_proj")
        return out if cache is None else (out, (k, v))

    def _norm(self, name, x):
        norm = RMSNorm(self.norm_eps, self.norm_order, dtype=self.dtype, param_dtype=self.param_dtype,
                       axis_name="kv" if self.qk_norm == "head" else None, name=name)
        if self.qk_norm == "head":
            return norm(x)
        return norm(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)
