"""Training a `jimm_nnx.CausalLM` with `nnx.Optimizer`: the loss is `jimm_linen.training`'s
(run on the model's placement through the bridge), and the train state is the Linen
`TrainState` tree, so `jimm_linen.train_state_io` saves and restores NNX runs too.

    lm = jimm_nnx.CausalLM.from_pretrained(path)        # under jax.set_mesh(mesh): sharded
    optimizer = nnx.Optimizer(lm, optax.adamw(1e-4), wrt=nnx.Param)
    step = jimm_nnx.make_train_step()
    metrics = step(lm, optimizer, {"input_ids": ids, "attention_mask": mask})
    train_state_io.save(ckpt_dir, jimm_nnx.train_state(lm, optimizer))
    jimm_nnx.set_train_state(lm, optimizer, train_state_io.restore(ckpt_dir, jimm_nnx.train_state(lm, optimizer)))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec

import bridge
from jimm_linen import training
from jimm_linen.training import DEFAULT_CHUNK_SIZE, TrainState


def next_token_loss(model: bridge.LinenModule, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                    loss_mask: jax.Array | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    train: bool = False, rngs: Any = None) -> tuple[jax.Array, jax.Array]:
    """`jimm_linen.training.next_token_loss` of a bridged decoder (a `jimm_nnx.CausalLM`) with
    its current parameters, on its placement (Auto or Explicit mesh): `(mean loss, number of
    target tokens)`, differentiable with `nnx.grad` / `nnx.value_and_grad`. `train=True` runs
    dropout from `rngs` (default: the model's own streams)."""
    loss, metrics = loss_and_metrics(model, input_ids, attention_mask, loss_mask=loss_mask, chunk_size=chunk_size,
                                     train=train, rngs=rngs)
    return loss, metrics["num_tokens"]


def loss_and_metrics(model: bridge.LinenModule, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                     loss_mask: jax.Array | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     train: bool = False, rngs: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`jimm_linen.training.loss_and_metrics` of a bridged decoder: `(loss, metrics)`, the
    cross-entropy plus the family's auxiliary loss, and each term."""
    streams = bridge.rng_streams(model.to_nnx__rngs if rngs is None else rngs) if train else {}
    fn = functools.partial(training.loss_and_metrics, model.linen_module, chunk_size=chunk_size, train=train)
    return model.placement.run(lambda v, ids, mask, lmask, r: fn(v, ids, mask, loss_mask=lmask, rngs=r),
                               bridge.to_linen_variables(model), input_ids, attention_mask, loss_mask, streams,
                               out_specs=PartitionSpec())


def make_train_step(*, chunk_size: int = DEFAULT_CHUNK_SIZE, donate: bool = True, train: bool = False
                    ) -> Callable[[bridge.LinenModule, nnx.Optimizer, Mapping[str, Any]], dict[str, jax.Array]]:
    """`step(model, optimizer, batch) -> metrics`: one `optimizer.update` on `next_token_loss`
    under `nnx.jit` (model and optimizer donated with `donate=True`; updated in place either
    way). `batch` is a dict with `input_ids`, optionally `attention_mask` and `loss_mask`; on a
    sharded model it is placed along the batch dim by the model's rules (on a mesh of several
    processes, each passes its own rows: `jimm_linen.training.place_rows`). `train=True` runs
    dropout from the model's streams. Metrics as `jimm_linen.training.make_train_step`'s.

    The batch is checked first (`jimm_linen.training.check_batch` with the model's vocabulary
    size: keys, `[B, T]` integer ids, mask shapes, ids in `[0, vocab)`), so a bad batch is a
    `ValueError` and never reaches the donated model and optimizer. Inside an outer `nnx.jit`
    the ids are traced and their values go unchecked: check the concrete batch there first."""

    @nnx.jit(donate_argnums=(0, 1) if donate else ())
    def update(model, optimizer, batch):
        def loss_fn(model):
            return loss_and_metrics(model, batch["input_ids"], batch.get("attention_mask"),
                                    loss_mask=batch.get("loss_mask"), chunk_size=chunk_size, train=train)

        (loss, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}

    def step(model, optimizer, batch):
        vocab, placement = model.linen_module.config.vocab_size, model.placement
        if not placement.sharded:
            return update(model, optimizer, training.check_batch(batch, vocab))
        # The ids are checked once placed, on the global batch (as the Linen step does).
        batch = {k: training.place_rows(v, lambda shape: placement.leaf_sharding(
            ("batch",) + (None,) * (len(shape) - 1), shape)) for k, v in training.check_batch(batch).items()}
        return update(model, optimizer, training.check_batch(batch, vocab))

    return step


# --- one train state for both APIs ------------------------------------------------------------

def _dicts(tree):
    """`tree` with every `nnx.State` as a plain nested dict (its leaves untouched)."""
    def convert(x):
        return nnx.to_pure_dict(x, extract_fn=lambda v: v) if isinstance(x, nnx.State) else x
    return jax.tree.map(convert, tree, is_leaf=lambda x: isinstance(x, (nnx.State, nnx.Variable)))


def _opt_variables(optimizer: nnx.Optimizer):
    """The optimizer state as the optax tree with its `nnx.Variable`s as leaves."""
    return _dicts(optimizer.opt_state)


def _check_structure(got, want, what: str) -> None:
    if jax.tree.structure(got) != jax.tree.structure(want):
        raise ValueError(f"{what} does not match the model and optimizer: {jax.tree.structure(got)} vs "
                         f"{jax.tree.structure(want)}")


def train_state(model: bridge.LinenModule, optimizer: nnx.Optimizer) -> TrainState:
    """The `jimm_linen.training.TrainState` of an NNX run: the model's Linen params tree, the
    optimizer's optax state as `tx.init(params)` shapes it, the step as int32 (the same arrays;
    nothing is copied but the step). Save it with `jimm_linen.train_state_io.save`; it is also
    the restore target that keeps every array on this model's shardings."""
    params = bridge.to_linen_variables(model)["params"]
    opt_state = jax.tree.map(lambda v: v.get_value(), _opt_variables(optimizer),
                             is_leaf=lambda x: isinstance(x, nnx.Variable))
    _check_structure(opt_state, jax.eval_shape(optimizer.tx.init, params), "the optimizer state")
    return TrainState(params=params, opt_state=opt_state, step=jnp.asarray(optimizer.step.get_value(), jnp.int32))


def set_train_state(model: bridge.LinenModule, optimizer: nnx.Optimizer, state: TrainState) -> None:
    """Put `state` (e.g. restored from a checkpoint, Linen's or NNX's) into `model` and
    `optimizer`, in place."""
    params = nnx.state(model, nnx.Param)
    _check_structure(state.params, nnx.to_pure_dict(params), "the params")
    nnx.replace_by_pure_dict(params, state.params)
    nnx.update(model, params)
    variables = _opt_variables(optimizer)
    _check_structure(state.opt_state, jax.tree.map(lambda v: 0, variables, is_leaf=lambda x: isinstance(x, nnx.Variable)),
                     "the optimizer state")
    jax.tree.map(lambda var, x: var.set_value(x), variables, state.opt_state,
                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    optimizer.step.set_value(jnp.asarray(state.step, optimizer.step.get_value().dtype))
