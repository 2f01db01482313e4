"""Attention whose score computation is the pluggable `attention_fn`: the encoders' self- and
cross-attention (`MultiHeadAttention`) and the decoders' grouped-query self-attention with q/k
RMSNorm, rotary embeddings per attention kind, sliding windows, soft-capping and a KV cache
(`Attention`), over shared projection pieces."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.layers.attention_fns import dot_product_attention
from jimm_linen.layers.block_inputs import Own, Shared
from jimm_linen.layers.kv_cache import write_layer
from jimm_linen.layers.linear import DenseGeneral, default_kernel_init
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.layers.rope import apply_rotary
from jimm_linen.partitioning import constrain

ACT_HEADS = ("act_batch", "act_length", "act_heads", "act_kv")


QK_NORMS = (None, "head", "projection")


def _project(name, x, heads, head_dim, heads_axis, use_bias, kw):
    y = DenseGeneral(features=(heads, head_dim), kernel_axes=("embed", heads_axis, "kv"), use_bias=use_bias,
                     name=name, **kw)(x)
    y = constrain(y, ("act_batch", "act_length", f"act_{heads_axis}", "act_kv"))
    return checkpoint_name(y, f"{name}_proj")


def _output(out, embed, use_bias, kw):
    out = constrain(out, ACT_HEADS)
    out = DenseGeneral(features=embed, axis=(-2, -1), kernel_axes=("heads", "kv", "embed"), use_bias=use_bias,
                       name="out", **kw)(out)
    return checkpoint_name(out, "out_proj")


class MultiHeadAttention(nn.Module):
    """The encoders' self- or cross-attention, kernels named `("embed", "heads", "kv")`.

    `qkv_bias`: one flag for the query, key and value projections, or a `(q, k, v)` tuple
    (DINOv3 has no key bias); `out_bias`: the output projection's.
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
                 is_causal: bool = False, rotary=None):
        """`rotary`: `(cos, sin)` rotating queries and keys (see `layers.rope.apply_rotary`)."""
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init or default_kernel_init())
        biases = self.qkv_bias if isinstance(self.qkv_bias, tuple) else (self.qkv_bias,) * 3
        q = _project("query", inputs_q, self.num_heads, self.head_dim, "heads", biases[0], kw)
        k = _project("key", inputs_kv, self.num_heads, self.head_dim, "heads", biases[1], kw)
        v = _project("value", inputs_kv, self.num_heads, self.head_dim, "heads", biases[2], kw)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out = _attend(self, q, k, v, deterministic, mask=mask, is_causal=is_causal)
        return _output(out, inputs_q.shape[-1], self.out_bias, kw)


def _attend(module, q, k, v, deterministic, **options):
    """The module's `attention_fn` (or the default), or the default with probability dropout
    when training asks for it (a fused kernel never materialises the probabilities)."""
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if module.attention_dropout > 0.0 and not deterministic:
        if module.attention_fn is not None:
            raise ValueError("attention-probability dropout in training needs the default attention; "
                             "set attention_dropout=0 to train with a custom attention_fn")
        return dot_product_attention(q, k, v, dropout_rate=module.attention_dropout,
                                     dropout_rng=module.make_rng("dropout"), **options)
    return (module.attention_fn or dot_product_attention)(q, k, v, **options)


class Attention(nn.Module):
    """The decoders' self-attention over `block_inputs.Shared` / `Own`: grouped-query
    (`num_kv_heads` key/value heads, kernels named `kv_heads`), optional q/k RMSNorm (`qk_norm`
    "head": over each head, Qwen3; "projection": over the whole projection, OLMo 2) before the
    rotary embedding of the layer's attention kind (`norm_eps`, `norm_order`, `norm_offset` as
    `RMSNorm`'s: Gemma 3's `1 + w`), the layer's sliding window, `scale` (default
    `head_dim ** -0.5`) and `logits_soft_cap`, and the layer's KV cache.

    The mask is built here from the query and key slots, the keys' validity and the window.
    Without a cache, or filling an empty one, the queries attend over their own keys with
    `is_causal=True` and the window as `local_window_size`, so a backend keeps its causal
    (and local) fast path; through a cache, over the whole buffer under an explicit mask.
    Returns `(out, keys, values)`, the cache slice updated (None without a cache)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_bias: bool = False
    out_bias: bool = False
    qk_norm: str | None = None
    norm_eps: float = 1e-6
    norm_order: str = "cast_then_scale"
    norm_offset: float = 0.0
    scale: float | None = None
    logits_soft_cap: float | None = None
    attention_fn: Any = None
    attention_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None
    out_kernel_init: Any = None  # the output projection's, where it differs (GPT-2's residual scaling)

    @nn.compact
    def __call__(self, x, shared: Shared, own: Own):
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}; known: {QK_NORMS}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init or default_kernel_init())
        q = _project("query", x, self.num_heads, self.head_dim, "heads", self.use_bias, kw)
        k = _project("key", x, self.num_kv_heads, self.head_dim, "kv_heads", self.use_bias, kw)
        v = _project("value", x, self.num_kv_heads, self.head_dim, "kv_heads", self.use_bias, kw)
        if self.qk_norm:
            q, k = self._norm("query_norm", q), self._norm("key_norm", k)
        rotary = shared.select(own.kind, shared.rotary)
        if rotary is not None:  # None: a family without rotary embeddings (GPT-2)
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        keys = values = None
        if own.keys is not None:
            keys, values = write_layer(own.keys, own.values, k, v, shared.index)
        options = dict(scale=self.scale, logits_soft_cap=self.logits_soft_cap)
        window = shared.window(own.kind)
        t = x.shape[1]
        if shared.fresh:
            mask = shared.key_valid[:, :t]
            if window is None or isinstance(window, int):
                options["local_window_size"] = None if window is None else (window - 1, 0)
                mask = mask[:, None, None, :]
            else:  # a traced window (kinds differ under scan): stated in the mask
                mask = mask[:, None, None, :] & _in_window(jnp.arange(t), jnp.arange(t), window)
            out = _attend(self, q, k, v, shared.deterministic, mask=mask, is_causal=True, **options)
        else:
            slots = shared.index + jnp.arange(t)
            rule = jnp.arange(keys.shape[1])[None, :] <= slots[:, None]
            if window is not None:
                rule &= _in_window(slots, jnp.arange(keys.shape[1]), window)
            mask = shared.key_valid[:, None, None, :] & rule[None, None]
            out = _attend(self, q, keys, values, shared.deterministic, mask=mask, **options)
        out_kw = kw if self.out_kernel_init is None else dict(kw, kernel_init=self.out_kernel_init)
        return _output(out, x.shape[-1], self.out_bias, out_kw), keys, values

    def _norm(self, name, x):
        norm = RMSNorm(self.norm_eps, self.norm_order, dtype=self.dtype, param_dtype=self.param_dtype,
                       axis_name="kv" if self.qk_norm == "head" else None, offset=self.norm_offset, name=name)
        if self.qk_norm == "head":
            return norm(x)
        return norm(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)


def _in_window(q_slots, k_slots, window):
    """HF's sliding window (`sliding_window_overlay`): a query sees the `window` most recent
    key columns, its own included."""
    return q_slots[:, None] - k_slots[None, :] < window
