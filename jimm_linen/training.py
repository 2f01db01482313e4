"""Training a decoder LM: the next-token loss, a train state, and an optax train step jitted
with shardings from the logical rules (`jimm_linen.partitioning`).

The loss never materialises `[B, T, V]` float32 logits: the model runs to its final hidden
states (`method="hidden"`), then the LM head, log-softmax and NLL run `chunk_size` positions at
a time under `lax.scan`, each chunk's gradients taken while its logits exist (see
`chunked_cross_entropy`). Peak memory for the head is one `[B, chunk, V]` block.

A typical sharded loop::

    model, variables = jimm_linen.from_pretrained(path, mesh=mesh, rules="fsdp")
    tx = optax.adamw(1e-4)
    state = init_train_state(model, tx, variables["params"], mesh=mesh, rules="fsdp")
    step = make_train_step(model, tx, mesh=mesh, rules="fsdp")
    for batch in batches:   # {"input_ids", "attention_mask", optional "loss_mask"}
        state, metrics = step(state, batch)

bf16 compute with float32 parameters is the module's `dtype=jnp.bfloat16` (its
`param_dtype` stays float32; gradients and optimizer state are float32); remat is the module's
`remat_policy=` ("none", "minimal", "full", ...; see `jimm_linen.layers.remat_policy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jimm_linen import partitioning as pt
from jimm_linen.models.decoder import check_token_ids

# Positions per chunk of the LM head: [B, 512, V] float32 logits at a time (for a 128k vocabulary
# and batch 8, 2 GiB) instead of the whole sequence's.
DEFAULT_CHUNK_SIZE = 512

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


# --- the loss ---------------------------------------------------------------------------------

def next_token_weights(input_ids: jax.Array, attention_mask: jax.Array | None = None,
                       loss_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """`(targets, weights)`, both `[B, T - 1]`: position t predicts token t + 1.

    A target counts (weight 1) when it and the token before it are real (`attention_mask`):
    padding is never a target and never predicts one, on either side (so the first real token
    of a left-padded row, which has no real token before it, is no target either). `loss_mask`
    (`[B, T]`, True where a token is a target; False for prompt tokens to train on completions
    only) further selects targets. On an unpadded batch without `loss_mask` every next token
    counts, as in HF's `labels=input_ids` loss."""
    b, t = input_ids.shape
    valid = jnp.ones((b, t), bool) if attention_mask is None else _mask(attention_mask, (b, t), "attention_mask")
    weights = valid[:, :-1] & valid[:, 1:]
    if loss_mask is not None:
        weights = weights & _mask(loss_mask, (b, t), "loss_mask")[:, 1:]
    return input_ids[:, 1:], weights


def _check_shape(mask, shape, name: str) -> None:
    if tuple(getattr(mask, "shape", ())) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(getattr(mask, 'shape', ()))}, input_ids {tuple(shape)}: "
                         f"they must match")


def _mask(mask, shape, name: str) -> jax.Array:
    _check_shape(mask, shape, name)
    return jnp.asarray(mask).astype(bool)


def _check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size!r}")


def chunked_cross_entropy(module: nn.Module, variables: Mapping[str, Any], hidden: jax.Array, targets: jax.Array,
                          weights: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[jax.Array, jax.Array]:
    """`(sum of weighted NLL, sum of weights)` of `targets` `[B, N]` under the LM head of
    `module` on final hidden states `hidden` `[B, N, E]` (`module.apply(variables, h,
    method="logits")`), `chunk_size` positions at a time.

    Differentiated, each chunk's gradients (for the head's parameters and the chunk's hidden
    states) are taken in the forward pass, while its logits exist, and the backward pass only
    scales them by the loss's cotangent: no chunk's logits are stored, and none is computed
    twice (recomputing them under `jax.checkpoint` cost a 336M Llama's training step one more
    `2 x tokens x embed x vocab` FLOPs, 3%). The head's parameters are the leaves of `variables`
    its `logits` reads (found by tracing it); the loss gives the others no gradient."""
    _check_chunk_size(chunk_size)
    b, n, e = hidden.shape
    if targets.shape != (b, n) or weights.shape != (b, n):
        raise ValueError(f"targets {targets.shape} and weights {weights.shape} must be [batch, positions] = {(b, n)}")
    chunk = min(chunk_size, n)
    chunks = -(-n // chunk)
    pad = chunks * chunk - n  # zero-weight positions to fill the last chunk

    def split(x):  # [B, N, ...] -> [chunks, B, chunk, ...]; the batch dim keeps its sharding
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(b, chunks, chunk, *x.shape[2:]), 0, 1)

    weights = weights.astype(jnp.float32)
    leaves, tree = jax.tree.flatten(variables)
    read = _read_by(lambda *ls: module.apply(jax.tree.unflatten(tree, ls), hidden[:, :chunk], method="logits"),
                    leaves)
    # Leaves the head does not read are placeholders inside the loss: it must not close over the
    # caller's (differentiated) arrays.
    unread = [None if r else jnp.zeros((), leaf.dtype) for leaf, r in zip(leaves, read)]

    def chunk_nll(head, h, t, w):
        it = iter(head)
        logits = module.apply(jax.tree.unflatten(tree, [next(it) if r else u for r, u in zip(read, unread)]), h,
                              method="logits")  # float32 [B, chunk, V]
        # The target's logit as a masked sum, not a gather: with the vocabulary sharded (tp)
        # this reduces over the shards like the logsumexp does.
        picked = jnp.sum(logits * jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype), axis=-1)
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - picked) * w)

    @jax.custom_vjp
    def total_nll(head, hs, ts, ws):
        def body(total, xs):
            return total + chunk_nll(head, *xs), None

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (hs, ts, ws))[0]

    def forward(head, hs, ts, ws):
        def body(carry, xs):
            total, grads = carry
            nll, pull = jax.vjp(lambda hd, h: chunk_nll(hd, h, *xs[1:]), head, xs[0])
            d_head, d_h = pull(jnp.ones((), nll.dtype))
            return (total + nll, [g + d for g, d in zip(grads, d_head)]), d_h

        zeros = [jnp.zeros_like(x) for x in head]
        (total, d_head), d_hs = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (hs, ts, ws))
        return total, (d_head, d_hs)

    def backward(res, g):
        d_head, d_hs = res
        return [(d * g).astype(d.dtype) for d in d_head], (d_hs * g).astype(d_hs.dtype), None, None

    total_nll.defvjp(forward, backward)
    head = [leaf for leaf, r in zip(leaves, read) if r]
    return total_nll(head, split(hidden), split(targets), split(weights)), jnp.sum(weights)


def _read_by(fn: Callable, args: list) -> list[bool]:
    """Which of `args` `fn(*args)` reads (its traced program uses them)."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    return [id(v) in used for v in jaxpr.invars]


def loss_and_metrics(module: nn.Module, variables: Mapping[str, Any], input_ids: jax.Array,
                     attention_mask: jax.Array | None = None, *, loss_mask: jax.Array | None = None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, train: bool = False,
                     rngs: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, metrics)`: the mean next-token cross-entropy plus the family's auxiliary loss
    (`module.aux_loss` of the blocks' per-layer `aux` outputs, already weighted, e.g. MoE load
    balancing; none for dense families), and `{"cross_entropy", "num_tokens"[, "aux_loss"]}`."""
    _check_chunk_size(chunk_size)  # before the forward pass
    targets, weights = next_token_weights(input_ids, attention_mask, loss_mask)
    h, _, _, aux = module.apply(variables, input_ids, attention_mask, None, None, train, method="hidden",
                                rngs=rngs or {})
    total, count = chunked_cross_entropy(module, variables, h[:, :-1], targets, weights, chunk_size)
    ce = total / jnp.maximum(count, 1.0)
    metrics = {"cross_entropy": ce, "num_tokens": count}
    extra = module.apply(variables, aux, attention_mask, method="aux_loss")
    if extra is None:
        return ce, metrics
    return ce + extra, {**metrics, "aux_loss": extra}


def next_token_loss(module: nn.Module, variables: Mapping[str, Any], input_ids: jax.Array,
                    attention_mask: jax.Array | None = None, *, loss_mask: jax.Array | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, train: bool = False,
                    rngs: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """`(loss, number of target tokens)` of a `jimm_linen.CausalLM`: the mean next-token
    cross-entropy (plus the family's auxiliary loss, see `loss_and_metrics`).

    Targets and their weights are `next_token_weights(input_ids, attention_mask, loss_mask)`;
    the mean is over counted targets (0 when there are none). On an unpadded batch this is HF's
    `model(input_ids, labels=input_ids).loss`. `train=True` runs dropout with `rngs`
    (`{"dropout": key}`)."""
    loss, metrics = loss_and_metrics(module, variables, input_ids, attention_mask, loss_mask=loss_mask,
                                     chunk_size=chunk_size, train=train, rngs=rngs)
    return loss, metrics["num_tokens"]


# --- train state and step -----------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    """What a training run carries from step to step (and what `jimm_linen.train_state_io` saves):
    the `params` tree (`variables["params"]`), the optax `opt_state` and the `step` count (int32).
    `jimm_nnx.train_state(model, optimizer)` gives the same tree for an NNX model."""

    params: Any
    opt_state: Any
    step: jax.Array


def _example_inputs(module: nn.Module) -> tuple:
    return module.config.dummy_inputs()


def train_state_shardings(module: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh,
                          rules="fsdp") -> TrainState:
    """NamedShardings of a `TrainState` on `mesh` under `rules`: params by their logical names,
    optimizer moments like their params, the step and scalars replicated."""
    inputs = _example_inputs(module)
    return TrainState(params=pt.param_shardings(module, *inputs, mesh=mesh, rules=rules),
                      opt_state=pt.optimizer_shardings(tx, module, *inputs, mesh=mesh, rules=rules),
                      step=NamedSharding(pt.auto_mesh(mesh), PartitionSpec()))


def abstract_train_state(module: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh | None = None,
                         rules="fsdp") -> TrainState:
    """Shapes and dtypes of a `TrainState` for `module` and `tx` (`jax.ShapeDtypeStruct`s), with
    the shardings of `train_state_shardings` when `mesh` is given: the target to restore a
    checkpoint onto any mesh (`train_state_io.restore(dir, abstract_train_state(...))`)."""
    params = nn.unbox(pt.abstract_variables(module, *_example_inputs(module))["params"])
    shapes = TrainState(params=params, opt_state=jax.eval_shape(tx.init, params),
                        step=jax.ShapeDtypeStruct((), jnp.int32))
    if mesh is None:
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=_one_device()), shapes)
    shardings = train_state_shardings(module, tx, mesh=mesh, rules=rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _one_device() -> jax.sharding.Sharding:
    """Where an unsharded state lives: committed to the first device, like a restored one, since
    `jit` compiles once more for committed arguments after uncommitted ones."""
    return jax.sharding.make_single_device_sharding(jax.devices()[0])


def init_train_state(module: nn.Module, tx: optax.GradientTransformation, params: Any, *,
                     mesh: Mesh | None = None, rules="fsdp") -> TrainState:
    """A `TrainState` at step 0 for `params` (e.g. `from_pretrained(...)[1]["params"]`), placed
    by `train_state_shardings` when `mesh` is given (params already there are not copied) and
    the optimizer state created in place. The state holds the params' buffers, so a donating
    train step invalidates the arrays passed in here."""
    params = nn.unbox(params)
    if mesh is None:
        one = _one_device()
        params = jax.device_put(params, one)
        return TrainState(params, jax.jit(tx.init, out_shardings=one)(params), jax.device_put(jnp.zeros((), jnp.int32), one))
    shardings = train_state_shardings(module, tx, mesh=mesh, rules=rules)
    params = pt.shard_params(params, shardings.params)
    with pt.activation_sharding(mesh, rules):
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), shardings.step))


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules="fsdp") -> dict[str, NamedSharding]:
    """Each `[B, T]` array of a batch split along its batch dim by the rules' `batch` rule."""
    return {k: pt.data_sharding(v.shape, mesh, rules) for k, v in batch.items()}


def place_rows(x, sharding_of: Callable[[tuple[int, ...]], NamedSharding]) -> jax.Array:
    """`x`, an input array with the batch first, placed as `sharding_of(global shape)` says.

    On a mesh of several processes (hosts), host data (numpy, or an array on this process's own
    devices) is this process's rows of the global batch: the global array is assembled from
    every process's rows (`jax.make_array_from_process_local_data`), a process's rows going
    where its devices hold the batch (on a `jax.make_mesh` mesh, process 0's first). In one
    process they are the whole batch. A `jax.Array` already spanning the processes is the
    global batch."""
    shape = tuple(np.shape(x))
    if shape and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        # Split as a global batch whose rows every mesh axis divides: each process's part of it.
        probe = sharding_of((shape[0] * sharding_of(shape).mesh.size,) + shape[1:])
        if not probe.is_fully_addressable:
            x = jax.make_array_from_process_local_data(probe, np.asarray(x))
    return jax.device_put(x, sharding_of(tuple(x.shape)))


def place_batch(batch: Mapping[str, Any], mesh: Mesh, rules="fsdp") -> dict[str, jax.Array]:
    """The batch on `mesh`, each array split along its batch dim as `batch_shardings` says; on a
    mesh of several processes, each process passes its own rows (see `place_rows`)."""
    return {k: place_rows(v, lambda shape: pt.data_sharding(shape, mesh, rules)) for k, v in batch.items()}


# The smallest and largest id of a batch on device (sharded or not): two numbers cross to the host.
_id_extremes = jax.jit(lambda ids: jnp.stack([jnp.min(ids), jnp.max(ids)])[None])


def _check_input_ids(ids, vocab_size: int) -> None:
    """`check_token_ids` ([B, T] integer ids in [0, vocab_size)) without copying the batch to
    the host: numpy ids are checked where they are, device ids by their jitted min and max."""
    if (isinstance(ids, jax.Array) and not isinstance(ids, jax.core.Tracer) and ids.ndim == 2
            and jnp.issubdtype(ids.dtype, jnp.integer) and ids.size):
        ids = _id_extremes(ids)  # [1, 2]: the same checks, on two numbers
    check_token_ids(ids, vocab_size)


def check_batch(batch: Mapping[str, Any], vocab_size: int | None = None) -> dict[str, Any]:
    """The batch a train step may consume, checked before the step runs, so that a bad batch
    cannot reach (and, donated, destroy) the train state: a dict of `input_ids` `[B, T]`
    integer ids and optional `attention_mask` / `loss_mask` of the same shape (None entries
    dropped), and with `vocab_size` every id in `[0, vocab_size)`. An id equal to the
    vocabulary size would turn the loss and every parameter into NaN; a negative one would
    silently train on the wrong embedding row. HF raises on both; so does this.

    The id range needs values: numpy ids are checked on the host, device arrays by a jitted
    min/max (one transfer of two numbers). Under an outer `jit` the batch is traced and only
    its keys, shapes and dtype can be checked: check concrete batches with this function
    before calling the jitted code."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError(f"a batch is a dict with 'input_ids' (and optionally 'attention_mask', 'loss_mask'), "
                         f"got {type(batch).__name__}{' with keys ' + str(sorted(batch)) if isinstance(batch, Mapping) else ''}")
    unknown = sorted(set(batch) - set(BATCH_KEYS))
    if unknown:
        raise ValueError(f"unknown batch keys {unknown}; a batch holds {list(BATCH_KEYS)}")
    batch = {k: v for k, v in batch.items() if v is not None}
    ids = batch["input_ids"]
    if vocab_size is not None:
        _check_input_ids(ids, vocab_size)
    for name in BATCH_KEYS[1:]:
        if name in batch and hasattr(ids, "shape"):
            _check_shape(batch[name], ids.shape, name)
    return batch


def make_train_step(module: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    rules="fsdp", chunk_size: int = DEFAULT_CHUNK_SIZE,
                    donate: bool = True) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, batch, rng=None) -> (state, metrics)`: one optax update on
    `next_token_loss`, compiled once per batch shape.

    With `mesh`, the state's in and out shardings are `train_state_shardings(module, tx, mesh,
    rules)` and the batch is placed by `place_batch` (its batch dim over the data axes; on a
    mesh of several processes, each process passes its own rows);
    the activations follow `rules` (the step traces under `activation_sharding`). `donate=True`
    donates the state: its buffers are reused for the new one. `batch` is a dict with
    `input_ids`, optionally `attention_mask` and `loss_mask` (see `next_token_weights`);
    `rng` switches dropout on (`train=True`). `metrics`: `loss`, `num_tokens` (targets counted)
    and `grad_norm` (global L2 norm of the gradients). The compiled function is `step.jitted`
    (`step.jitted.lower(state, batch, rng)`; trace it under `activation_sharding` yourself).

    Before the donated update runs, `check_batch(batch, module.config.vocab_size)` checks the
    batch (keys, `[B, T]` integer ids, mask shapes, ids in `[0, vocab)`): a bad batch is a
    `ValueError` naming the problem and the state is left as it was. Called under an outer
    `jit` (or through `step.jitted`) the ids are traced and their values go unchecked: call
    `check_batch` on the concrete batch first there.
    """
    state_shardings = train_state_shardings(module, tx, mesh=mesh, rules=rules) if mesh is not None else None

    def update(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array | None):
        def loss_fn(params):
            return loss_and_metrics(module, {"params": params}, batch["input_ids"], batch.get("attention_mask"),
                                    loss_mask=batch.get("loss_mask"), chunk_size=chunk_size, train=rng is not None,
                                    rngs=None if rng is None else {"dropout": rng})

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    jitted = jax.jit(update, in_shardings=(state_shardings, None, None), out_shardings=(state_shardings, None),
                     donate_argnums=(0,) if donate else ())

    def step(state: TrainState, batch: Mapping[str, Any], rng: jax.Array | None = None):
        if mesh is None:
            return jitted(state, check_batch(batch, module.config.vocab_size), rng)
        # The ids are checked once placed: across processes each process then sees the global
        # batch's extremes, and all refuse a bad id together (one refusing alone would leave the
        # others waiting in the step's collectives).
        batch = check_batch(place_batch(check_batch(batch), mesh, rules), module.config.vocab_size)
        with pt.activation_sharding(mesh, rules):
            return jitted(state, batch, rng)

    step.jitted = jitted
    return step

