"""What a decoder block receives and returns, as three small pytrees (a new input is a new field,
not a renumbering of every block's arguments):

- `Shared`: what every layer sees (positions, key validity, rotary tables per attention kind,
  each kind's window, the cache slot, flags). Broadcast by the stack.
- `Own`: what each layer owns (its attention kind, its cache slice). Scanned along `layers`.
- `Out`: what each layer hands back (its cache slice, its hidden state when collected, and
  `aux`, a dict of per-layer auxiliary outputs such as router logits), stacked along `layers`.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

FULL, SLIDING = "full_attention", "sliding_attention"


@flax.struct.dataclass
class Shared:
    """`positions [B, T]`: each token's position (HF's `position_ids`). `key_valid [B, S]`: the
    key slots holding real tokens. `rotary`: `(cos, sin)` per attention kind, in the order of
    `kinds`. `index`: the cache slot the queries are written at (None without a cache, then
    query i is key column i). Static: `kinds` (the model's attention kinds, e.g.
    `("full_attention", "sliding_attention")`), `windows` (each kind's sliding window or None),
    `deterministic`, and `fresh` (attend over the new keys alone: no cache, or an empty one)."""

    positions: jax.Array
    key_valid: jax.Array
    rotary: tuple
    index: jax.Array | None = None
    kinds: tuple[str, ...] = flax.struct.field(pytree_node=False, default=(FULL,))
    windows: tuple[int | None, ...] = flax.struct.field(pytree_node=False, default=(None,))
    deterministic: bool = flax.struct.field(pytree_node=False, default=True)
    fresh: bool = flax.struct.field(pytree_node=False, default=True)

    def select(self, kind, per_kind: tuple) -> Any:
        """This layer's entry of a per-kind tuple: static when the model has one kind or the
        kind is a Python int (a loop), an index into the stacked entries under scan."""
        if len(per_kind) == 1:
            return per_kind[0]
        if isinstance(kind, (int, np.integer)):
            return per_kind[int(kind)]
        return jax.tree.map(lambda *xs: jnp.stack(xs)[kind], *per_kind)

    def window(self, kind) -> int | jax.Array | None:
        """This layer's sliding window: static where `select` is, else a traced value with
        "no window" as the largest int32."""
        if len(set(self.windows)) == 1:
            return self.windows[0]
        if isinstance(kind, (int, np.integer)):
            return self.windows[int(kind)]
        return jnp.asarray([np.iinfo(np.int32).max if w is None else w for w in self.windows], jnp.int32)[kind]


@flax.struct.dataclass
class Own:
    """`kind`: the index of this layer's attention kind in `Shared.kinds`. `keys`, `values`:
    this layer's cache `[B, L, K, head_dim]`, or None without a cache. `layer`: the layer's
    index in the stack (a Python-side int in a loop, traced under scan), for what a family
    computes per layer (GPT-2's `scale_attn_by_inverse_layer_idx`)."""

    kind: Any
    keys: jax.Array | None = None
    values: jax.Array | None = None
    layer: Any = None


@flax.struct.dataclass
class Out:
    keys: jax.Array | None = None
    values: jax.Array | None = None
    hidden: jax.Array | None = None
    aux: dict = flax.struct.field(default_factory=dict)
