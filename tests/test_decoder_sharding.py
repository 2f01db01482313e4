"""A decoder on 8 fake CPU devices (tests/conftest.py sets XLA_FLAGS), a `("data", "fsdp",
"tensor")` = (2, 2, 2) mesh: the FSDP and TP presets shard the big kernels (TP: the key/value
kernels by `kv_heads`) and the KV cache (TP: `cache_kv_heads`), loaded straight into place;
prefill and decode through the sharded cache give the unsharded logits; AdamW steps through
Linen and NNX on Auto and Explicit meshes (jimm's Explicit FSDP recipe included) start at the
unsharded loss and lower it; an Orbax checkpoint written on one mesh resumes on other meshes,
through Linen and NNX, with the next step of the uninterrupted run.

Compiling dominates the time here, so each train step is compiled once (module fixtures) and
the checkpoint test reuses them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import bridge
import jimm_linen
import jimm_nnx
from jimm_linen import train_state_io, training
from jimm_linen import partitioning as pt
from jimm_linen.layers.kv_cache import KVCache
from tests import lm_checkpoints as lmc
from tests.helpers import assert_close, assert_same_tree

AXES = ("data", "fsdp", "tensor")
DP = ("data", "fsdp")
_ = None

ATTN, MLP = "decoder/layers/self_attention", "decoder/layers/mlp"
KERNELS = {  # Linen path -> spec per preset; the scanned `layers` axis stays whole
    "fsdp": {f"{ATTN}/query/kernel": (_, "fsdp", _, _), f"{ATTN}/key/kernel": (_, "fsdp", _, _),
             f"{ATTN}/value/kernel": (_, "fsdp", _, _), f"{ATTN}/out/kernel": (_, _, _, "fsdp"),
             f"{MLP}/wi_0/kernel": (_, "fsdp", _), f"{MLP}/wo/kernel": (_, _, "fsdp"),
             "token_embedder/embedding": (_, "fsdp"), "logits_dense/kernel": ("fsdp", _)},
    "tp": {f"{ATTN}/query/kernel": (_, _, "tensor", _), f"{ATTN}/key/kernel": (_, _, "tensor", _),
           f"{ATTN}/value/kernel": (_, _, "tensor", _), f"{ATTN}/out/kernel": (_, "tensor", _, _),
           f"{MLP}/wi_0/kernel": (_, _, "tensor"), f"{MLP}/wo/kernel": (_, "tensor", _),
           "token_embedder/embedding": ("tensor", _), "logits_dense/kernel": (_, "tensor")},
    "fsdp_tp": {f"{ATTN}/query/kernel": (_, "fsdp", "tensor", _), f"{ATTN}/key/kernel": (_, "fsdp", "tensor", _),
                f"{ATTN}/value/kernel": (_, "fsdp", "tensor", _), f"{ATTN}/out/kernel": (_, "tensor", _, "fsdp"),
                f"{MLP}/wi_0/kernel": (_, "fsdp", "tensor"), f"{MLP}/wo/kernel": (_, "tensor", "fsdp"),
                "token_embedder/embedding": ("tensor", "fsdp"), "logits_dense/kernel": ("fsdp", "tensor")},
}
# The KV cache [layers, batch, length, kv_heads, head_dim].
CACHE = {"fsdp": (_, DP, _, _, _), "tp": (_, DP, _, "tensor", _)}

TX = optax.adamw(1e-2, weight_decay=0.1)
CHUNK = 4
STEPS = 3


def make_mesh(axis_type):
    return jax.make_mesh((2, 2, 2), AXES, axis_types=(axis_type,) * 3)


def flat(tree) -> dict:
    return flatten_dict(tree, sep="/")


def padded(spec, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


def assert_specs(params: dict, preset: str):
    placed = flat(params)
    for path, spec in KERNELS[preset].items():
        arr = placed[path]
        assert padded(arr.sharding.spec, arr.ndim) == spec, (preset, path, arr.sharding.spec)
        assert arr.addressable_shards[0].data.size < arr.size, (preset, path)  # really split


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    return directory, lmc.build_llama(directory)


@pytest.fixture(scope="module")
def unsharded(checkpoint):
    """The unsharded load, the batch, and HF's loss on it (the references are HF's, so no
    unsharded program needs compiling here)."""
    directory, hf = checkpoint
    model, variables = jimm_linen.from_pretrained(directory)
    data = lmc.batch()
    return model, variables, data, lmc.hf_forward(hf, data["input_ids"], data["attention_mask"]).loss.item()


# --- loading into shardings, the KV cache -------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(KERNELS))
def test_from_pretrained_into_preset_shardings(checkpoint, unsharded, preset):
    mesh = make_mesh(AxisType.Explicit)
    model, variables = jimm_linen.from_pretrained(checkpoint[0], mesh=mesh, rules=preset)
    assert_specs(variables["params"], preset)
    expected = pt.param_shardings(model, *model.config.dummy_inputs(), mesh=mesh, rules=preset)
    jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding, s), variables["params"], expected)
    assert_same_tree(jax.tree.map(np.asarray, variables), jax.tree.map(np.asarray, unsharded[1]))


def prefill_and_decode(model, variables, ids, mask, next_ids):
    """Prefill the prompt into a fresh cache (made inside the program, so its layout is what
    the model's constraints give it), then decode one token through it."""
    cache = model.init_cache(ids.shape[0], ids.shape[1] + 4)
    logits, cache = model.apply(variables, ids, mask, cache=cache)
    step_logits, cache = model.apply(variables, next_ids, jnp.ones_like(next_ids, bool), cache=cache)
    return logits, step_logits, cache


@pytest.fixture(scope="module")
def hf_decode(checkpoint, unsharded):
    """HF's logits for the prompt, and for one more token after it (the decode step)."""
    _, hf = checkpoint
    ids, mask = unsharded[2]["input_ids"], unsharded[2]["attention_mask"]
    next_ids = ids[:, -1:][::-1].copy()
    prompt = lmc.hf_forward(hf, ids, mask).logits.numpy()
    longer = lmc.hf_forward(hf, np.concatenate([ids, next_ids], 1), np.concatenate([mask, np.ones_like(next_ids, bool)], 1))
    return next_ids, prompt, longer.logits.numpy()[:, -1:]


@pytest.mark.parametrize("preset", sorted(CACHE))
def test_kv_cache_sharded_prefill_and_decode(checkpoint, unsharded, hf_decode, preset):
    _, _, data, _ = unsharded
    next_ids, ref_logits, ref_step = hf_decode
    mesh = make_mesh(AxisType.Auto)
    model, variables = jimm_linen.from_pretrained(checkpoint[0], mesh=mesh, rules=preset)
    inputs = [jax.device_put(x, pt.data_sharding(x.shape, mesh, preset))
              for x in (data["input_ids"], data["attention_mask"], next_ids)]
    with pt.activation_sharding(mesh, preset):
        logits, step_logits, cache = jax.jit(lambda *a: prefill_and_decode(model, *a))(variables, *inputs)
    mask = data["attention_mask"]
    assert_close(np.asarray(logits)[mask], ref_logits[mask], what="prefill logits")
    assert_close(step_logits, ref_step, what="decode logits")
    for got in (cache.keys, cache.values):
        assert padded(got.sharding.spec, got.ndim) == CACHE[preset], got.sharding.spec
        assert got.addressable_shards[0].data.size < got.size
    np.testing.assert_array_equal(cache.mask, np.concatenate([mask, np.ones((mask.shape[0], 1), bool),
                                                              np.zeros((mask.shape[0], 3), bool)], 1))
    # `logical_shardings` gives the cache the layout the model's constraints do.
    expected = pt.logical_shardings(cache, KVCache.logical_axes(), mesh, preset)
    assert cache.keys.sharding.is_equivalent_to(expected.keys, 5)


def _hf_greedy(checkpoint, unsharded):
    """The left-padded batch and HF `generate`'s 5 greedy tokens on the unsharded model."""
    import torch

    ids, mask = unsharded[2]["input_ids"], unsharded[2]["attention_mask"]
    with torch.no_grad():
        ref = checkpoint[1].generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                                     max_new_tokens=5, do_sample=False, pad_token_id=0).numpy()
    return ids, mask, ref


def test_generation_under_tp_gives_hf_generate_tokens(checkpoint, unsharded):
    """Greedy generation with the TP-sharded params and cache (split on key/value heads) gives
    the tokens of HF `generate` on the unsharded model, for the left-padded batch."""
    ids, mask, ref = _hf_greedy(checkpoint, unsharded)
    mesh = make_mesh(AxisType.Auto)
    model, variables = jimm_linen.from_pretrained(checkpoint[0], mesh=mesh, rules="tp")
    with pt.activation_sharding(mesh, "tp"):
        out = jimm_linen.generate(model, variables, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=5,
                                  pad_token_id=0)  # EOS ids: the checkpoint's, on both sides
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, ids.shape[1]:], ref[:, ids.shape[1]:])


def test_generation_under_an_explicit_mesh_gives_hf_generate_tokens(checkpoint, unsharded):
    """The README's recipe sets `jax.make_mesh`'s default (Explicit) mesh: Linen `generate` on
    FSDP+TP-sharded params and NNX `lm.generate` on a model placed on that mesh run under it
    (they raised `ShardingTypeError` on the cache's slot mask) and give HF `generate`'s tokens."""
    ids, mask, ref = _hf_greedy(checkpoint, unsharded)
    mesh = make_mesh(AxisType.Explicit)
    model, variables = jimm_linen.from_pretrained(checkpoint[0], mesh=mesh, rules="fsdp_tp")
    with jax.set_mesh(mesh):
        out = jimm_linen.generate(model, variables, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=5,
                                  pad_token_id=0)
        lm = jimm_nnx.CausalLM.from_pretrained(checkpoint[0])
        assert lm.placement.sharded
        nnx_out = lm.generate(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=5, pad_token_id=0)
        streamed = np.stack(list(lm.stream(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=5, pad_token_id=0)), 1)
    for got in (out, nnx_out):
        np.testing.assert_array_equal(np.asarray(got.sequences)[:, ids.shape[1]:], ref[:, ids.shape[1]:])
    np.testing.assert_array_equal(streamed, ref[:, ids.shape[1]:ids.shape[1] + streamed.shape[1]])


# --- train steps ------------------------------------------------------------------------------

# case -> (preset, mesh axis type, remat policy): the runs with remat must match those without
# (the checkpoint test resumes the fsdp_tp run, remat "full", without remat and with "minimal").
LINEN_CASES = {"tp-explicit": ("tp", AxisType.Explicit, "none"), "fsdp_tp-auto": ("fsdp_tp", AxisType.Auto, "full")}
NNX_CASES = {"fsdp-explicit": ("fsdp", AxisType.Explicit, "minimal"), "tp-auto": ("tp", AxisType.Auto, "none")}
SAVED_BY = "fsdp_tp-auto"  # the run that writes the checkpoint after 2 steps


class Runs:
    """Each case's train step, compiled once, and its run of `STEPS` steps."""

    def __init__(self, checkpoint, unsharded, directory):
        self.checkpoint, self.unsharded, self.directory = checkpoint, unsharded, directory
        self.linen, self.nnx = {}, {}

    def linen_run(self, case):
        if case not in self.linen:
            preset, axis_type, remat = LINEN_CASES[case]
            mesh = make_mesh(axis_type)
            model, variables = jimm_linen.from_pretrained(self.checkpoint, mesh=mesh, rules=preset, remat_policy=remat)
            step = training.make_train_step(model, TX, mesh=mesh, rules=preset, chunk_size=CHUNK)
            state = training.init_train_state(model, TX, variables["params"], mesh=mesh, rules=preset)
            first, losses = state, []
            for i in range(STEPS):
                if case == SAVED_BY and i == STEPS - 1:
                    train_state_io.save(self.directory, state)
                state, metrics = step(state, self.unsharded[2])
                losses.append(float(metrics["loss"]))
            self.linen[case] = dict(model=model, mesh=mesh, preset=preset, step=step, state=state, losses=losses,
                                    donated=all(x.is_deleted() for x in jax.tree.leaves(first)))
        return self.linen[case]

    def nnx_run(self, case):
        if case not in self.nnx:
            preset, axis_type, remat = NNX_CASES[case]
            mesh = make_mesh(axis_type)
            with jax.set_mesh(mesh):  # jimm's recipe: the model is built and trained under the mesh
                sharding = None if preset == "fsdp" else preset  # the default is FSDP on the current mesh
                lm = jimm_nnx.CausalLM.from_pretrained(self.checkpoint, sharding=sharding,
                                                       use_gradient_checkpointing=remat if remat != "none" else False)
                optimizer = nnx.Optimizer(lm, TX, wrt=nnx.Param)
                step = jimm_nnx.make_train_step(chunk_size=CHUNK)
                losses = [float(step(lm, optimizer, self.unsharded[2])["loss"]) for _ in range(STEPS)]
            self.nnx[case] = dict(lm=lm, optimizer=optimizer, mesh=mesh, preset=preset, step=step, losses=losses)
        return self.nnx[case]


@pytest.fixture(scope="module")
def runs(checkpoint, unsharded, tmp_path_factory):
    return Runs(checkpoint[0], unsharded, tmp_path_factory.mktemp("train_ckpt"))


def assert_trains(losses, unsharded_loss):
    assert_close(losses[0], unsharded_loss, what="first loss vs unsharded")
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("case", sorted(LINEN_CASES))
def test_linen_train_step_sharded(runs, unsharded, case):
    run = runs.linen_run(case)
    assert_trains(run["losses"], unsharded[3])
    state = run["state"]
    assert int(state.step) == STEPS and run["donated"]
    assert run["step"].jitted._cache_size() == 1  # the new state has the shardings the step takes
    assert_specs(state.params, run["preset"])
    shardings = training.train_state_shardings(run["model"], TX, mesh=run["mesh"], rules=run["preset"])
    jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding, s), state, shardings)
    adam = state.opt_state[0]
    for moment in (adam.mu, adam.nu):  # moments sit on their params' shardings
        jax.tree.map(lambda m, p: np.testing.assert_equal(m.sharding, p.sharding), moment, state.params)


@pytest.mark.parametrize("case", sorted(NNX_CASES))
def test_nnx_train_step_sharded(runs, unsharded, case):
    run = runs.nnx_run(case)
    assert_trains(run["losses"], unsharded[3])
    lm, optimizer = run["lm"], run["optimizer"]
    assert lm.mesh is run["mesh"] and int(optimizer.step.get_value()) == STEPS
    params = bridge.to_linen_variables(lm)["params"]
    for path, spec in KERNELS[run["preset"]].items():
        arr = flat(params)[path]
        assert arr.sharding.is_equivalent_to(jax.sharding.NamedSharding(run["mesh"], P(*spec)), arr.ndim), path
    adam = jimm_nnx.train_state(lm, optimizer).opt_state[0]
    for moment in (adam.mu, adam.nu):
        jax.tree.map(lambda m, p: np.testing.assert_equal(m.sharding.is_equivalent_to(p.sharding, p.ndim), True),
                     moment, params)


# --- checkpoints across meshes and APIs ---------------------------------------------------------

def test_checkpoint_resumes_on_other_meshes_and_apis(runs, unsharded):
    """The fsdp_tp run (Auto mesh, remat "full") saved after 2 steps; its 3rd step is the
    uninterrupted one. Restored onto the tp run's Explicit mesh (Linen, no remat) and onto the
    FSDP recipe's NNX model (remat "minimal"), the next step gives that step's loss and state."""
    saved = runs.linen_run(SAVED_BY)
    assert train_state_io.latest_step(runs.directory) == STEPS - 1
    want_loss, want = saved["losses"][-1], jax.tree.map(np.asarray, saved["state"])

    linen = runs.linen_run("tp-explicit")
    target = training.abstract_train_state(linen["model"], TX, mesh=linen["mesh"], rules=linen["preset"])
    state = train_state_io.restore(runs.directory, target)
    assert_specs(state.params, "tp")
    state, metrics = linen["step"](state, unsharded[2])
    assert linen["step"].jitted._cache_size() == 1  # restored exactly onto the step's shardings
    assert_close(metrics["loss"], want_loss, what="resumed Linen loss")
    jax.tree.map(lambda x, w: assert_close(x, w, what="resumed Linen state"), state, want)

    run = runs.nnx_run("fsdp-explicit")
    lm, optimizer = run["lm"], run["optimizer"]
    with jax.set_mesh(run["mesh"]):
        restored = train_state_io.restore(runs.directory, jimm_nnx.train_state(lm, optimizer))
        jimm_nnx.set_train_state(lm, optimizer, restored)
        assert int(optimizer.step.get_value()) == STEPS - 1
        assert_specs(bridge.to_linen_variables(lm)["params"], "fsdp")
        metrics = run["step"](lm, optimizer, unsharded[2])
    assert_close(metrics["loss"], want_loss, what="resumed NNX loss")
    jax.tree.map(lambda x, w: assert_close(x, w, what="resumed NNX state"), jimm_nnx.train_state(lm, optimizer), want)
