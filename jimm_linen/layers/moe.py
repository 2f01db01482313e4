"""A mixture-of-experts feed-forward block with exact top-k routing: every token goes to its
`top_k` experts, none is dropped, there is no capacity factor.

The router is HF's (Mixtral, Qwen3-MoE): logits in the compute dtype, softmax in float32, top-k
of the probabilities, the chosen weights renormalised when `norm_topk_prob`. The experts are gated
MLPs stacked on an `experts` axis (`wi_0`, `wi_1`: `[experts, embed, mlp]`, `wo`: `[experts, mlp,
embed]`), so a rule table can split whole experts over devices (the `ep` preset).

Ways to compute the same thing:
- `"ragged"`: the `tokens x top_k` assignments sorted by expert, each expert's rows one group of
  `jax.lax.ragged_dot`, the results scattered back with their weights. Work is proportional to
  `top_k` where XLA has a grouped matmul for it (TPU); XLA's CPU lowering computes every expert
  on every row instead (the dense path's work, and slower).
- `"tiled"`: the same sorted assignments, each expert's rows padded to whole tiles of `tile_rows`
  rows, then a `lax.scan` over the tiles, each one `x_tile @ w[expert]` through `lax.switch` over
  the experts' own buffers; tiles left empty by the routing run an empty branch, so a decode
  step (its kernels split once by `per_expert`) reads only the experts its tokens chose.
  Work is the assignments' plus at most `tile - 1` padding rows per expert.
- `"dense"`: every expert on every token, the outputs mixed by a `[tokens, experts]` weight
  matrix that is zero off the chosen experts. `num_experts / top_k` times the work; the tests'
  reference for the others.
- `"auto"` (default): `"tiled"` on CPU, `"ragged"` elsewhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.activations import get_activation
from jimm_linen.layers.linear import DenseGeneral, default_kernel_init
from jimm_linen.partitioning import constrain

IMPLEMENTATIONS = ("auto", "ragged", "tiled", "dense")


def route(router_logits: jax.Array, top_k: int, norm_topk_prob: bool) -> tuple[jax.Array, jax.Array]:
    """`(weights, experts)`, each `[..., top_k]`: the float32 softmax's top-k (ties to the lower
    index, as `torch.topk`), renormalised to sum to 1 when `norm_topk_prob`."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights, experts


def _ragged(x, experts, weights, wi_0, wi_1, wo, act):
    """x `[N, D]`, experts / weights `[N, K]` -> `[N, D]`."""
    n, k = experts.shape
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k  # the assignment's token, in expert order
    sizes = jnp.bincount(flat, length=wi_0.shape[0]).astype(jnp.int32)
    xs = x[token]
    h = act(jax.lax.ragged_dot(xs, wi_0, sizes)) * jax.lax.ragged_dot(xs, wi_1, sizes)
    y = jax.lax.ragged_dot(h, wo, sizes)
    # As HF: each expert's output times its weight, rounded to the compute dtype, then summed
    # per token in that dtype.
    y = (y * weights.reshape(-1)[order][:, None]).astype(x.dtype)
    return jnp.zeros_like(x).at[token].add(y)


def tile_rows(assignments: int, num_experts: int) -> int:
    """The `"tiled"` path's rows per tile: about one expert's share of the assignments (a power
    of two in [8, 128]), so that a prefill runs few large matmuls and a decode step pads little."""
    share = -(-assignments // num_experts)
    return min(128, max(8, 1 << (share - 1).bit_length()))


def _tiled(x, experts, weights, wi_0, wi_1, wo, act):
    """x `[N, D]`, experts / weights `[N, K]` -> `[N, D]`. The kernels come a tuple per expert
    (`per_expert`): a tile's matmuls read its expert's own buffer through `lax.switch`. XLA on
    CPU fuses a traced index into the kernel (`w[e]`) with the matmul into a loop tens of times
    slower than the matmul, so stacked kernels are split once per call."""
    n, k = experts.shape
    num_experts, a = len(wi_0), n * k
    tile = tile_rows(a, num_experts)
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token, expert = order // k, flat[order]  # each assignment's token and expert, in expert order
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    tiles = -(-sizes // tile)
    tiles_end = jnp.cumsum(tiles)
    # Each expert's rows start a tile: assignment i goes to row `slot[i]` of the padded layout.
    slot = (tiles_end - tiles)[expert] * tile + jnp.arange(a) - (jnp.cumsum(sizes) - sizes)[expert]
    num_tiles = -(-a // tile) + num_experts  # the most the sizes can need
    xs = jnp.zeros((num_tiles * tile, x.shape[1]), x.dtype).at[slot].set(x[token])
    # A tile past the last expert's (index num_experts) holds no row: the last branch, zeros.
    tile_expert = jnp.searchsorted(tiles_end, jnp.arange(num_tiles), side="right")
    d_out = wo[0].shape[1]
    branches = [lambda xt, e=e: (act(xt @ wi_0[e]) * (xt @ wi_1[e])) @ wo[e] for e in range(num_experts)]
    branches.append(lambda xt: jnp.zeros((tile, d_out), xt.dtype))

    def body(_, tile_inputs):
        xt, e = tile_inputs
        return None, jax.lax.switch(e, branches, xt)

    _, ys = jax.lax.scan(body, None, (xs.reshape(num_tiles, tile, -1), tile_expert))
    y = ys.reshape(num_tiles * tile, -1)[slot]
    # As HF (and `_ragged`): each expert's output times its weight, rounded to the compute dtype,
    # then summed per token in that dtype.
    y = (y * weights.reshape(-1)[order][:, None]).astype(x.dtype)
    return jnp.zeros_like(x).at[token].add(y)


def _dense(x, experts, weights, wi_0, wi_1, wo, act):
    mix = jnp.zeros((x.shape[0], wi_0.shape[0]), weights.dtype)
    mix = mix.at[jnp.arange(x.shape[0])[:, None], experts].add(weights)
    h = act(jnp.einsum("nd,edf->nef", x, wi_0)) * jnp.einsum("nd,edf->nef", x, wi_1)
    y = jnp.einsum("nef,efd->ned", h, wo)
    return (y * mix[..., None]).astype(x.dtype).sum(1)


def resolve_implementation(implementation: str) -> str:
    """`"auto"`: `"tiled"` on CPU, `"ragged"` elsewhere."""
    if implementation == "auto":
        return "tiled" if jax.default_backend() == "cpu" else "ragged"
    return implementation


def per_expert(params: dict, implementation: str) -> dict:
    """`params` with every MoE block's stacked kernels split into a tuple of per-expert arrays
    (which `MoeBlock` reads as they are), where `implementation` resolves to `"tiled"`; unchanged
    otherwise. Generation splits once per call, so a decode step reads only its tokens'
    experts, each in place."""
    if resolve_implementation(implementation) != "tiled":
        return params

    def split(tree):
        if not isinstance(tree, dict):
            return tree
        if "router" in tree and all(isinstance(tree.get(n), jax.Array) and tree[n].ndim == 3 for n in EXPERT_KERNELS):
            return {**tree, **{n: tuple(tree[n]) for n in EXPERT_KERNELS}}
        return {k: split(v) for k, v in tree.items()}

    return split(params)


EXPERT_KERNELS = ("wi_0", "wi_1", "wo")


class MoeBlock(nn.Module):
    """`x [B, T, D] -> (y [B, T, D], router_logits [B, T, experts])`."""

    num_experts: int
    top_k: int
    mlp_dim: int
    hidden_act: str = "silu"
    norm_topk_prob: bool = True
    # Qwen3-MoE rounds the routing weights to the compute dtype before mixing; Mixtral mixes
    # with the float32 weights.
    weights_in_compute_dtype: bool = False
    implementation: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"MoE implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k {self.top_k} must lie in [1, num_experts={self.num_experts}]")
        b, t, d = x.shape
        init = self.kernel_init or default_kernel_init()
        logits = DenseGeneral(self.num_experts, kernel_axes=("embed", "experts"), use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, kernel_init=init, name="router")(x)
        logits = constrain(logits, ("act_batch", "act_length", "act_experts"))
        weights, experts = route(logits.reshape(b * t, self.num_experts), self.top_k, self.norm_topk_prob)

        def kernel(name, shape, axes):
            stored = self.get_variable("params", name) if self.has_variable("params", name) else None
            if isinstance(stored, tuple):  # split by `per_expert` (generation's decode steps)
                if len(stored) != self.num_experts or any(w.shape != shape[1:] for w in stored):
                    raise ValueError(f"{'/'.join((*self.path, name))}: {len(stored)} per-expert kernels of shapes "
                                     f"{sorted({w.shape for w in stored})}, expected {shape[0]} of {shape[1:]}")
                return stored
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

        wi_0 = kernel("wi_0", (self.num_experts, d, self.mlp_dim), ("experts", "embed", "mlp"))
        wi_1 = kernel("wi_1", (self.num_experts, d, self.mlp_dim), ("experts", "embed", "mlp"))
        wo = kernel("wo", (self.num_experts, self.mlp_dim, d), ("experts", "mlp", "embed"))
        implementation = resolve_implementation(self.implementation)
        if implementation == "tiled":
            wi_0, wi_1, wo = (w if isinstance(w, tuple) else tuple(w) for w in (wi_0, wi_1, wo))
        else:
            wi_0, wi_1, wo = (jnp.stack(w) if isinstance(w, tuple) else w for w in (wi_0, wi_1, wo))
        leaves, tree = jax.tree.flatten((x.reshape(b * t, d), wi_0, wi_1, wo))
        xs, wi_0, wi_1, wo = jax.tree.unflatten(tree, nn.dtypes.promote_dtype(*leaves, dtype=self.dtype))
        if self.weights_in_compute_dtype:
            weights = weights.astype(xs.dtype)
        compute = {"ragged": _ragged, "tiled": _tiled, "dense": _dense}[implementation]
        y = compute(xs, experts, weights, wi_0, wi_1, wo, get_activation(self.hidden_act))
        return checkpoint_name(y.reshape(b, t, d), "mlp_out"), logits


def load_balancing_loss(router_logits: jax.Array, top_k: int, attention_mask: jax.Array | None = None) -> jax.Array:
    """HF's `load_balancing_loss_func` (Switch Transformer eqs. 4-6) over every layer's router
    logits `[layers, B, T, experts]`: `experts * sum_e f_e * P_e`, with `f_e` the share of
    (unmasked) tokens' top-k choices that went to `e` (a token counts once per choice) and `P_e`
    its mean router probability. Padding (`attention_mask` 0) counts for neither."""
    num_experts = router_logits.shape[-1]
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    _, chosen = jax.lax.top_k(probs, top_k)
    if attention_mask is None:
        attention_mask = jnp.ones(router_logits.shape[1:3], jnp.float32)
    mask = jnp.broadcast_to(attention_mask.astype(jnp.float32), router_logits.shape[:3])
    counts = (jax.nn.one_hot(chosen, num_experts, dtype=jnp.float32).sum(-2) * mask[..., None]).sum((0, 1, 2))
    rows = mask.sum()
    return num_experts * jnp.sum((counts / rows) * ((probs * mask[..., None]).sum((0, 1, 2)) / rows))
