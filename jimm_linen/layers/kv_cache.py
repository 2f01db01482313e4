"""The decoders' KV cache: one pytree for all layers, its write and its slot bookkeeping.

Slots are columns: a batch is left-padded to a common length, so slot `j` holds the `j`-th
column of every row (padding included, never attended to). HF's causal and sliding-window rules
are stated on the same columns (`cache_position`), so a window counts padding slots as HF does.
Sliding layers keep the full buffer and mask what lies outside their window: memory is that of
a full-attention layer (see the README), and every layer shares one slot index.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jimm_linen.partitioning import constrain

CACHE_AXES = ("layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_kv")
LAYER_CACHE_AXES = CACHE_AXES[1:]


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, `[layers, batch, length, kv_heads, head_dim]` (or a tuple
    of each layer's `[batch, length, kv_heads, head_dim]`, see `per_layer`); `mask`
    `[batch, length]`, True for the slots written with a real token (False for left padding and
    unwritten slots); `index`, the next slot to write (one for every row). `empty` is static:
    True for a fresh cache, whose first write (the prefill) attends over the new keys alone,
    so a causal backend keeps its fast path."""

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    index: jax.Array
    empty: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def zeros(cls, layers: int, batch: int, length: int, kv_heads: int, head_dim: int,
              dtype: Any = jnp.float32) -> KVCache:
        shape = (layers, batch, length, kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((), jnp.int32), empty=True)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def per_layer(self) -> KVCache:
        """This cache with each layer's keys and values in a buffer of its own (tuples of
        `[batch, length, kv_heads, head_dim]`), for layers run in a loop (`layers.stack`):
        each layer then writes its new slots in place and attention reads its buffer where it
        lies. A stacked cache in a loop is sliced into copies and re-stacked at every step
        (three passes over the whole cache per token in XLA's CPU program)."""
        if isinstance(self.keys, tuple):
            return self
        return self.replace(keys=tuple(self.keys), values=tuple(self.values))

    @staticmethod
    def logical_axes() -> KVCache:
        """The logical axis names of each field (tensor parallelism shards `cache_kv_heads`)."""
        return KVCache(CACHE_AXES, CACHE_AXES, ("cache_batch", "cache_length"), ())

    def check_fits(self, tokens: int) -> None:
        if tokens > self.length:
            raise ValueError(f"{tokens} tokens do not fit a KV cache of length {self.length}")

    def written_mask(self, attention_mask: jax.Array) -> jax.Array:
        """The slot mask once `attention_mask [B, T]` is written at `index`."""
        return write_slots(self.mask, attention_mask, self.index)

    def advance(self, keys: jax.Array, values: jax.Array, mask: jax.Array, tokens: int) -> KVCache:
        return KVCache(keys, values, mask, self.index + tokens)


def write_slots(buffer: jax.Array, update: jax.Array, index: jax.Array, axis: int = 1) -> jax.Array:
    """`buffer` with `update` written from `index` along `axis`, whose sharding it keeps.

    A select over the slot axis rather than `dynamic_update_slice`: under an Explicit mesh the
    latter needs operand and update of one sharding type, which a fresh cache and a caller's
    tokens need not share (`ShardingTypeError`); the select reads as many bytes on a cache."""
    n, t = buffer.shape[axis], update.shape[axis]
    slots = jnp.arange(n)
    fresh = (slots >= index) & (slots < index + t)
    # Each slot's source column in `update` (clipped where the slot is not written).
    taken = jnp.take(update, jnp.clip(slots - index, 0, t - 1), axis=axis)
    shape = [1] * buffer.ndim
    shape[axis] = n
    return jnp.where(fresh.reshape(shape), taken.astype(buffer.dtype), buffer)


def write_layer(keys: jax.Array, values: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array):
    """One layer's cache `[B, L, K, H]` with the new `k`, `v` `[B, T, K, H]` written at `index`."""
    k = constrain(jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), index, axis=1), LAYER_CACHE_AXES)
    v = constrain(jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), index, axis=1),
                  LAYER_CACHE_AXES)
    return k, v
