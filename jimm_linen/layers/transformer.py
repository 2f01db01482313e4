"""The pre-LayerNorm encoder block and the layer stack (`nn.scan` or a Python loop, optional remat)."""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.core import LayerNorm
from jimm_linen.layers.mlp import MlpBlock

ACT_EMBED = ("act_batch", "act_length", "act_embed")

# Projection outputs tagged with `checkpoint_name` inside the block.
PROJECTION_NAMES = ("query_proj", "key_proj", "value_proj", "out_proj", "mlp_in", "mlp_out")

_NAMED_POLICIES = {
    "minimal": lambda: jax.checkpoint_policies.save_only_these_names(*PROJECTION_NAMES),
    "full": lambda: jax.checkpoint_policies.nothing_saveable,
}
_JAX_POLICIES = (
    "nothing_saveable", "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
    "checkpoint_dots", "checkpoint_dots_with_no_batch_dims",
)


def remat_policy(name: str):
    """Resolve a remat policy name: "none" (no remat; returns None), "minimal" (keep the
    projection outputs, recompute the rest), "full" (keep nothing), a nullary policy of
    `jax.checkpoint_policies` such as "dots_saveable", or "save:name1,name2" for
    `save_only_these_names` over `checkpoint_name` tags (see `PROJECTION_NAMES`)."""
    if name == "none":
        return None
    if name in _NAMED_POLICIES:
        return _NAMED_POLICIES[name]()
    if name in _JAX_POLICIES:
        return getattr(jax.checkpoint_policies, name)
    if name.startswith("save:"):
        names = [n for n in name[len("save:"):].split(",") if n]
        unknown = set(names) - set(PROJECTION_NAMES)
        if unknown:
            raise ValueError(f"remat policy {name!r}: unknown tensor names {sorted(unknown)}; "
                             f"tagged ones are {PROJECTION_NAMES}")
        return jax.checkpoint_policies.save_only_these_names(*names)
    raise ValueError(
        f"unknown remat policy {name!r}; use 'none', 'minimal', 'full', 'save:<names>' or one of {_JAX_POLICIES}"
    )


class EncoderBlock(nn.Module):
    """`x + Attn(LN(x))`, then `x + MLP(LN(x))`; returns `(x, x or None)` to be scannable."""

    num_heads: int
    mlp_dim: int
    hidden_act: str
    layer_norm_eps: float
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    attention_fn: Any = None
    is_causal: bool = False
    collect: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x, mask, deterministic):
        d = x.shape[-1]
        dense_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        y = LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="LayerNorm_0")(x)
        y = MultiHeadAttention(
            num_heads=self.num_heads, head_dim=d // self.num_heads, qkv_bias=self.qkv_bias,
            attention_fn=self.attention_fn, attention_dropout=self.attention_dropout,
            name="MultiHeadDotProductAttention_0", **dense_kw,
        )(y, None, mask, deterministic, self.is_causal)
        y = nn.Dropout(self.dropout_rate)(y, deterministic)
        x = nn.with_logical_constraint(x + y, ACT_EMBED)
        y = LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="LayerNorm_1")(x)
        y = MlpBlock(self.mlp_dim, self.hidden_act, name="MlpBlock_0", **dense_kw)(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic)
        x = nn.with_logical_constraint(x + y, ACT_EMBED)
        return x, (x if self.collect else None)


class Encoder(nn.Module):
    """`num_layers` EncoderBlocks and the final LayerNorm `encoder_norm`.

    `scan=True` stacks the blocks' parameters on a leading `layers` axis under `encoderblock`;
    `scan=False` names them `encoderblock_0..N-1`. `scan_to_loop` / `loop_to_scan` convert.
    Returns `(x, hidden_states)`: `hidden_states` is None unless `return_hidden_states`, then
    a tuple of every block's output (before `encoder_norm`).
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    hidden_act: str
    layer_norm_eps: float
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    attention_fn: Any = None
    is_causal: bool = False
    scan: bool = True
    remat_policy: str = "none"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, return_hidden_states: bool = False):
        block_kw = dict(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps, qkv_bias=self.qkv_bias,
            dropout_rate=self.dropout_rate, attention_dropout=self.attention_dropout,
            attention_fn=self.attention_fn, is_causal=self.is_causal,
            collect=return_hidden_states, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
        )
        block_cls = EncoderBlock
        policy = remat_policy(self.remat_policy)
        if self.remat_policy != "none":
            # static_argnums counts `self`: (self, x, mask, deterministic).
            block_cls = nn.remat(block_cls, policy=policy, prevent_cse=not self.scan,
                                 static_argnums=(3,))
        if self.scan:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(name="encoderblock", **block_kw)
            x, per_layer = stack(x, mask, deterministic)
            outputs = list(per_layer) if return_hidden_states else None
        else:
            outputs = []
            for i in range(self.num_layers):
                x, _ = block_cls(name=f"encoderblock_{i}", **block_kw)(x, mask, deterministic)
                outputs.append(x)
        hidden_states = tuple(outputs) if return_hidden_states else None
        x_out = LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="encoder_norm")(x)
        return x_out, hidden_states


_LOOP_KEY = re.compile(r"^encoderblock_(\d+)$")
_LOOP_PATH = re.compile(r"(^|/)encoderblock_(\d+)/")


def scan_groups(loop_paths) -> dict[str, list[str]]:
    """For flat '/'-joined parameter paths in the loop layout: each scan-layout path and the
    loop paths stacked into it, in layer order (paths outside the blocks map to themselves)."""
    groups: dict[str, dict[int, str]] = {}
    for p in loop_paths:
        m = _LOOP_PATH.search(p)
        key = _LOOP_PATH.sub(r"\1encoderblock/", p) if m else p
        groups.setdefault(key, {})[int(m.group(2)) if m else -1] = p
    return {k: [v[i] for i in sorted(v)] for k, v in groups.items()}


def _check_unboxed(tree) -> None:
    boxed = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    if any(isinstance(x, nn.meta.AxisMetadata) for x in boxed):
        raise TypeError("layout conversion works on plain arrays; unbox first with flax.linen.unbox(tree) "
                        "(the boxes' logical names would not follow the new layout)")


def scan_to_loop(tree: dict, num_layers: int | None = None) -> dict:
    """Unstack every `encoderblock` subtree (leading `layers` axis) into `encoderblock_{i}`."""
    _check_unboxed(tree)
    out = {}
    for k, v in tree.items():
        if k == "encoderblock":
            n = jax.tree.leaves(v)[0].shape[0]
            if num_layers is not None and n != num_layers:
                raise ValueError(f"scanned encoderblock has {n} layers, expected {num_layers}")
            for i in range(n):
                out[f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: a[i], v)
        elif isinstance(v, dict):
            out[k] = scan_to_loop(v, num_layers)
        else:
            out[k] = v
    return out


def loop_to_scan(tree: dict) -> dict:
    """Stack `encoderblock_{i}` subtrees into one `encoderblock` with a leading `layers` axis."""
    _check_unboxed(tree)
    out, blocks = {}, {}
    for k, v in tree.items():
        m = _LOOP_KEY.match(k)
        if m:
            blocks[int(m.group(1))] = v
        elif isinstance(v, dict):
            out[k] = loop_to_scan(v)
        else:
            out[k] = v
    if blocks:
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"encoderblock indices are not 0..N-1: {sorted(blocks)}")
        stack = np.stack if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(blocks)) else jnp.stack
        out["encoderblock"] = jax.tree.map(lambda *xs: stack(xs), *(blocks[i] for i in range(len(blocks))))
    return out
