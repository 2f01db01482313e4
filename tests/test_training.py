"""Training a decoder (jimm_linen/training.py, jimm_linen/train_state_io.py), unsharded: the
chunked next-token loss against HF's `labels=` loss and the full-logits loss (values and
gradients, padding and prompt masks), no `[B, T, V]` logits in the compiled step, remat
policies, bf16 compute with float32 params, Orbax save -> restore -> the same next step, and
bad batches refused before the Linen and NNX steps consume a donated state. Sharded runs are in
tests/test_decoder_sharding.py."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax import nnx

import jimm_linen
import jimm_nnx
from jimm_linen import train_state_io, training
from tests import lm_checkpoints as lmc
from tests.helpers import assert_close, assert_same_tree


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    hf = lmc.build_llama(directory)
    model, variables = jimm_linen.from_pretrained(directory)
    return hf, model, variables


def prompt_mask_batch():
    """The left-padded batch with the first 4 real tokens of every row as the prompt."""
    data = lmc.batch()
    mask = data["attention_mask"]
    real_before = np.cumsum(mask, axis=1) - 1
    return data["input_ids"], mask, mask & (real_before >= 4)


def full_logits_loss(model, variables, ids, mask, weights):
    """The straightforward loss: all `[B, T, V]` float32 logits at once."""
    logits = model.apply(variables, ids, mask)[:, :-1]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    return jnp.sum(nll * weights) / jnp.sum(weights)


def compiled_loss_and_grad(module, variables, chunk_size: int):
    """`(variables, ids, mask, loss_mask) -> ((loss, count), grads)`, compiled once (compiling
    dominates these tests' time): the executable, so its program text can be read too."""
    def loss(v, ids, mask, loss_mask):
        return training.next_token_loss(module, v, ids, mask, loss_mask=loss_mask, chunk_size=chunk_size)

    ids, mask, loss_mask = prompt_mask_batch()
    return jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables, ids, mask, loss_mask).compile()


@pytest.fixture(scope="module")
def chunk4(llama):
    _, model, variables = llama
    return compiled_loss_and_grad(model, variables, 4)


@pytest.fixture(scope="module")
def reference(llama):
    """The full-logits loss and its gradients on the prompt-masked batch, and its program."""
    _, model, variables = llama
    ids, mask, loss_mask = prompt_mask_batch()
    weights = lmc.hand_weights(mask, loss_mask)
    fn = jax.jit(jax.value_and_grad(lambda v: full_logits_loss(model, v, ids, mask, weights))).lower(variables).compile()
    return fn(variables), fn.as_text()


def test_next_token_weights():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)  # left, right, no padding
    loss_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
    ids = jnp.arange(15, dtype=jnp.int32).reshape(3, 5)
    targets, weights = training.next_token_weights(ids, mask, loss_mask)
    np.testing.assert_array_equal(targets, np.asarray(ids)[:, 1:])
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(weights, lmc.hand_weights(mask, loss_mask))
    _, weights = training.next_token_weights(ids)
    assert np.asarray(weights).all() and weights.shape == (3, 4)


def test_loss_equals_hf_labels_loss(llama, chunk4):
    """HF's `labels=` loss (torch cross_entropy on HF's logits): on an unpadded batch, and on a
    left-padded one with prompt tokens excluded, where HF gets `-100` labels and the positions
    its `generate` would use. (11 positions in chunks of 4: the last chunk is padded.)"""
    import torch

    hf, _, variables = llama
    ids, mask, loss_mask = prompt_mask_batch()
    plain = lmc.batch(left_pad=(0, 0, 0, 0))["input_ids"]
    ones = np.ones_like(mask)
    with torch.no_grad():
        out = hf(torch.from_numpy(plain).long(), labels=torch.from_numpy(plain).long())
        by_hand = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                    torch.from_numpy(plain[:, 1:]).long().reshape(-1))
    (loss, count), _ = chunk4(variables, plain, ones, ones)
    assert_close(loss, out.loss.item(), what="unpadded loss vs HF labels=")
    assert_close(loss, by_hand.item(), what="unpadded loss vs torch cross_entropy")
    assert int(count) == plain.shape[0] * (plain.shape[1] - 1)

    out = lmc.hf_forward(hf, ids, mask, loss_mask)
    (loss, count), _ = chunk4(variables, ids, mask, loss_mask)
    assert_close(loss, out.loss.item(), what="left-padded, prompt-masked loss")
    assert int(count) == int(lmc.hand_weights(mask, loss_mask).sum())


def test_chunked_loss_and_gradients_equal_full_logits(llama, chunk4, reference):
    _, model, variables = llama
    ids, mask, loss_mask = prompt_mask_batch()
    (ref_loss, ref_grads), _ = reference
    # 3 chunks (the last one padded)...
    (loss, _), grads = chunk4(variables, ids, mask, loss_mask)
    assert_close(loss, ref_loss, what="loss, chunk 4")
    jax.tree.map(lambda g, r: assert_close(g, r, what="gradient, chunk 4"), grads, ref_grads)
    # ... or one chunk of all 11 positions (the value only: a gradient costs a compile).
    one_chunk = jax.jit(lambda v: training.next_token_loss(model, v, ids, mask, loss_mask=loss_mask, chunk_size=512))
    assert_close(one_chunk(variables)[0], ref_loss, what="loss, one chunk")
    # No target at all: zero loss (not NaN) and zero gradients.
    (loss, count), grads = chunk4(variables, ids, mask, np.zeros_like(mask))
    assert float(loss) == 0.0 and int(count) == 0
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_a_tied_head_gets_the_lookups_and_the_losss_gradients(tmp_path):
    """With tied embeddings the table is read by the lookup (plain autodiff) and by the chunked
    loss's head (gradients taken in its forward pass): the two must add up to the full-logits
    gradient."""
    lmc.build_llama(tmp_path, tie_word_embeddings=True)
    model, variables = jimm_linen.from_pretrained(tmp_path)
    assert "logits_dense" not in variables["params"]
    ids, mask, loss_mask = prompt_mask_batch()
    weights = lmc.hand_weights(mask, loss_mask)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(
        lambda v: full_logits_loss(model, v, ids, mask, weights)))(variables)
    (loss, _), grads = compiled_loss_and_grad(model, variables, 4)(variables, ids, mask, loss_mask)
    assert_close(loss, ref_loss, what="loss")
    jax.tree.map(lambda g, r: assert_close(g, r, what="gradient"), grads, ref_grads)


def _big_logit_buffers(hlo: str, batch: int, positions: int, vocab: int) -> list[str]:
    """float32 buffers ending in the vocabulary with at least `batch x positions x vocab`
    elements: all of a step's logits (or their stacked chunks) kept at once."""
    found = []
    for dims in re.findall(r"f32\[([\d,]+)\]", hlo):
        shape = [int(d) for d in dims.split(",")]
        if shape[-1] == vocab and np.prod(shape) >= batch * positions * vocab:
            found.append(dims)
    return found


def test_no_full_logits_in_the_compiled_gradient(llama, chunk4, reference):
    _, model, _ = llama
    b, t = lmc.BATCH, lmc.LENGTH
    vocab = model.config.vocab_size
    chunked = chunk4.as_text()
    assert not _big_logit_buffers(chunked, b, t - 1, vocab)
    assert f"f32[{b},4,{vocab}]" in chunked  # a chunk's logits
    # The check finds them where they exist: in the straightforward loss.
    assert _big_logit_buffers(reference[1], b, t - 1, vocab)


def test_remat_policy_gives_the_same_gradients(llama, chunk4):
    """`minimal` keeps the tagged projections and recomputes the rest. (`full` trains the
    fsdp_tp run of tests/test_decoder_sharding.py, whose steps equal runs without remat.)"""
    _, model, variables = llama
    args = (variables, *prompt_mask_batch())
    _, ref = chunk4(*args)
    _, grads = compiled_loss_and_grad(model.clone(remat_policy="minimal"), variables, 4)(*args)
    jax.tree.map(lambda g, r: assert_close(g, r, what="gradient under remat minimal"), grads, ref)


def fresh_params(variables):
    return jax.tree.map(jnp.copy, variables["params"])  # a donating step deletes what it is given


@pytest.fixture(scope="module")
def bf16(llama):
    """bf16 compute, float32 parameters: the module and its train step (compiled once)."""
    _, model, _ = llama
    module = model.clone(dtype=jnp.bfloat16)
    tx = optax.adamw(1e-2, weight_decay=0.1)
    return module, tx, training.make_train_step(module, tx, chunk_size=4)


def test_bf16_compute_with_float32_params_trains(llama, chunk4, bf16):
    _, _, variables = llama
    module, tx, step = bf16
    data = lmc.batch()
    hidden = jax.eval_shape(lambda v: module.apply(v, data["input_ids"], method="hidden")[0], variables)
    assert hidden.dtype == jnp.bfloat16
    state, losses = training.init_train_state(module, tx, fresh_params(variables)), []
    for _ in range(4):
        state, metrics = step(state, data)
        losses.append(float(metrics["loss"]))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for leaf in jax.tree.leaves((state.params, state.opt_state[0].mu, state.opt_state[0].nu)):
        assert leaf.dtype == jnp.float32
    (f32_loss, _), _ = chunk4(variables, data["input_ids"], data["attention_mask"], data["attention_mask"])
    assert abs(losses[0] - float(f32_loss)) <= 2e-2 * float(f32_loss)  # bf16's documented bound


def test_resumed_run_equals_uninterrupted(llama, bf16, tmp_path):
    """Bit for bit, on 4 different batches, saved after 2 steps (the bf16 run: its float32
    parameters and optimizer state are what is saved)."""
    _, _, variables = llama
    module, tx, step = bf16
    batches = [lmc.batch(seed) for seed in range(4)]

    state, losses = training.init_train_state(module, tx, fresh_params(variables)), []
    for data in batches:
        state, metrics = step(state, data)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 4

    resumed, resumed_losses = training.init_train_state(module, tx, fresh_params(variables)), []
    for data in batches[:2]:
        resumed, metrics = step(resumed, data)
        resumed_losses.append(float(metrics["loss"]))
    saved = jax.tree.map(np.asarray, resumed)
    assert train_state_io.save(tmp_path, resumed) == tmp_path.absolute() / "2"
    del resumed
    restored = train_state_io.restore(tmp_path, training.abstract_train_state(module, tx))
    assert isinstance(restored, training.TrainState)
    assert_same_tree(restored, saved)
    for data in batches[2:]:
        restored, metrics = step(restored, data)
        resumed_losses.append(float(metrics["loss"]))
    assert resumed_losses == losses
    assert_same_tree(restored, state)
    assert step.jitted._cache_size() == 1  # fresh and restored states take the same program

    assert train_state_io.all_steps(tmp_path) == [2] and train_state_io.latest_step(tmp_path) == 2
    with pytest.raises(ValueError, match="step 2 already exists"):
        train_state_io.save(tmp_path, saved)
    with pytest.raises(FileNotFoundError, match="no step 3 .* saved steps: \\[2\\]"):
        train_state_io.restore(tmp_path, saved, step=3)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        train_state_io.restore(tmp_path / "missing", saved)
    with pytest.raises(TypeError, match="ShapeDtypeStruct"):
        train_state_io.restore(tmp_path, {"params": "nope"})


def bad_batches(data, vocab: int):
    """(batch, the error it must raise): ids at the vocabulary size (the NaN one) and -1 (the
    silent one), on the host and on device; a `[T]` row; float ids; mis-shaped masks."""
    ids, mask = data["input_ids"], data["attention_mask"]
    too_big, negative = ids.copy(), ids.copy()
    too_big[2, 7], negative[1, 9] = vocab, -1
    out_of_range = rf"token ids must lie in \[0, {vocab}\) \(the vocabulary\); got ids from"
    return [({**data, "input_ids": too_big}, rf"{out_of_range} 0 to {vocab}$"),
            ({**data, "input_ids": jnp.asarray(too_big)}, rf"{out_of_range} 0 to {vocab}$"),
            ({**data, "input_ids": negative}, rf"{out_of_range} -1 to"),
            ({**data, "input_ids": jnp.asarray(negative)}, rf"{out_of_range} -1 to"),
            ({"input_ids": ids[0]}, r"input_ids must be \[batch, length\], got shape \(12,\)"),
            ({**data, "input_ids": ids.astype(np.float32)}, "input_ids must be integer token ids, got dtype float32"),
            ({**data, "attention_mask": mask[:, 1:]}, r"attention_mask has shape \(4, 11\), input_ids \(4, 12\)"),
            ({**data, "loss_mask": mask[:2]}, r"loss_mask has shape \(2, 12\), input_ids \(4, 12\)")]


def test_train_step_refuses_a_bad_batch_before_the_donated_state(llama, bf16):
    """Without the check an id equal to the vocabulary size turns the loss and every parameter
    into NaN (and the donated old state is gone) and -1 trains on the last embedding row."""
    _, _, variables = llama
    module, tx, step = bf16
    state = training.init_train_state(module, tx, fresh_params(variables))
    kept = jax.tree.map(np.asarray, state)
    for batch, error in bad_batches(lmc.batch(), module.config.vocab_size):
        with pytest.raises(ValueError, match=error):
            step(state, batch)
    assert_same_tree(state, kept)  # not donated: every buffer is alive and unchanged
    state, metrics = step(state, lmc.batch())
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def test_nnx_train_step_refuses_a_bad_batch_before_the_donated_model(llama):
    _, model, _ = llama
    lm = jimm_nnx.CausalLM.from_config(model.config)
    optimizer = nnx.Optimizer(lm, optax.adamw(1e-3), wrt=nnx.Param)
    kept = jax.tree.map(np.asarray, jimm_nnx.train_state(lm, optimizer))
    step = jimm_nnx.make_train_step()
    for batch, error in bad_batches(lmc.batch(), lm.config.vocab_size):
        with pytest.raises(ValueError, match=error):
            step(lm, optimizer, batch)
    assert_same_tree(jimm_nnx.train_state(lm, optimizer), kept)


def test_check_batch_under_an_outer_jit_checks_only_what_tracing_knows():
    """Traced ids have no values: shapes and dtypes are still checked, the range cannot be."""
    data = lmc.batch()
    jax.jit(lambda b: training.check_batch(b, 8))(data)  # ids up to 127 pass unchecked when traced
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 11\)"):
        jax.jit(lambda b: training.check_batch(b, 128))({**data, "attention_mask": data["attention_mask"][:, 1:]})
    with pytest.raises(ValueError, match="got ids from 0 to 1"):
        training.check_batch({"input_ids": np.array([[0, 1]])}, 1)


def decoder_params(layers: int, qk_norm: bool = False, tied: bool = False):
    """A small decoder's params tree (no model needed): `layers` layers, q/k norms, a tied head."""
    attention = {"query": {"kernel": jnp.ones((layers, 4, 2, 2))}}
    if qk_norm:
        attention |= {"query_norm": {"scale": jnp.ones((layers, 2))}, "key_norm": {"scale": jnp.ones((layers, 2))}}
    params = {"decoder": {"layers": {"mlp": {"wi": {"kernel": jnp.ones((layers, 4, 8))}}, "self_attention": attention}},
              "token_embedder": {"embedding": jnp.ones((16, 4))}}
    return params if tied else params | {"logits_dense": {"kernel": jnp.ones((4, 16))}}


def test_restore_names_the_step_and_paths_that_differ(tmp_path):
    """A directory whose latest step holds another model's tree: one line naming the step, the
    directory, a few missing, unexpected and mis-shaped paths, and `step=`; not Orbax's page
    per path suggesting `strict=False`. An older step of this model still restores."""
    tx = optax.adamw(1e-3)

    def train_state(params):
        return training.TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    state = train_state(decoder_params(2))
    train_state_io.save(tmp_path, state, step=1)
    train_state_io.save(tmp_path, train_state(decoder_params(3, qk_norm=True, tied=True)), step=5)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    with pytest.raises(ValueError) as error:
        train_state_io.restore(tmp_path, target)
    message = str(error.value)
    assert message.startswith(f"step 5 in {tmp_path.absolute()} holds another tree than the restore target")
    assert ("3 missing from the checkpoint (opt_state/0/mu/logits_dense/kernel, opt_state/0/nu/logits_dense/kernel, "
            "params/logits_dense/kernel)") in message
    assert "6 unexpected, only in the checkpoint (opt_state/0/mu/decoder/layers/self_attention/key_norm/scale, " in message
    assert "and 3 more)" in message
    assert "6 mis-shaped (opt_state/0/mu/decoder/layers/mlp/wi/kernel saved (3, 4, 8), target (2, 4, 8), " in message
    assert "step=...) (saved steps: [1, 5])" in message
    assert "\n" not in message and "strict" not in message
    assert_same_tree(train_state_io.restore(tmp_path, target, step=1), state)


def test_bad_input_is_named(llama, tmp_path):
    _, model, variables = llama
    data = lmc.batch()
    ids = data["input_ids"]
    with pytest.raises(ValueError, match=r"loss_mask has shape \(4, 5\), input_ids \(4, 12\)"):
        training.next_token_loss(model, variables, ids, loss_mask=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 11\)"):
        training.next_token_loss(model, variables, ids, np.ones((4, 11), bool))
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        training.next_token_loss(model, variables, ids, chunk_size=0)
    with pytest.raises(ValueError, match=r"unknown batch keys \['labels'\]"):
        training.check_batch({**data, "labels": ids})
    with pytest.raises(ValueError, match="a batch is a dict with 'input_ids'"):
        training.check_batch({"attention_mask": data["attention_mask"]})
    with pytest.raises(ValueError, match="pass step="):
        train_state_io.save(tmp_path, {"params": ids})
