"""Calling a jimm_nnx model eagerly runs one compiled program, the Linen apply's: bit for bit its
outputs, compiled once per shape, always with the model's current parameters and dropout
streams; and the same call inside nnx.jit (graph and tree mode), nnx.grad and a donated
training step behaves as before."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge
import jimm_linen
import jimm_nnx
from bridge.module import _compiled_apply
from tests.helpers import TINY, assert_close, assert_same_tree

VIT = jimm_linen.ViTConfig(**TINY)
CLIP = jimm_linen.CLIPConfig.from_variants("mu/4", "mu", image_size=16, vocab_size=64, max_position_embeddings=8,
                                           projection_dim=24, eos_token_id=3)
SIGLIP = jimm_linen.SigLIPConfig.from_variants("mu/4", image_size=16, vocab_size=64, max_position_embeddings=8)
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32))
IDS = jnp.asarray(np.random.default_rng(1).integers(4, 60, (2, 8)), jnp.int32)
MASK = jnp.ones((2, 8), jnp.int32).at[1, 6:].set(0)

# class -> config, then the calls to check: (method, inputs, keyword flags)
MODELS = {
    "VisionTransformer": (jimm_nnx.VisionTransformer, VIT,
                          [(None, (IMAGES,), {}), (None, (IMAGES,), dict(return_hidden_states=True))]),
    "CLIP": (jimm_nnx.CLIP, CLIP,
             [("outputs", (IMAGES, IDS, MASK), {}), ("outputs", (IMAGES, IDS, MASK), dict(return_loss=True)),
              ("encode_image", (IMAGES,), {}), ("encode_text", (IDS,), dict(attention_mask=MASK))]),
    "SigLIP": (jimm_nnx.SigLIP, SIGLIP,
               [("outputs", (IMAGES, IDS, None), dict(return_hidden_states=True)), ("encode_image", (IMAGES,), {}),
                ("encode_text", (IDS,), {})]),
    "CLIPVisionModel": (jimm_nnx.CLIPVisionModel, CLIP.vision, [(None, (IMAGES,), {})]),
    "CLIPTextModel": (jimm_nnx.CLIPTextModel, CLIP.text,
                      [(None, (IDS,), dict(attention_mask=MASK, return_hidden_states=True))]),
    "SigLIPVisionModel": (jimm_nnx.SigLIPVisionModel, SIGLIP.vision, [(None, (IMAGES,), {})]),
    "SigLIPTextModel": (jimm_nnx.SigLIPTextModel, SIGLIP.text, [(None, (IDS,), {})]),
}


def linen_apply(model, variables, *inputs, method=None, **flags):
    """The reference: `jax.jit` of the Linen apply, with the flags static (the NNX `outputs`
    of CLIP / SigLIP is the Linen `__call__`)."""
    method = None if method == "outputs" else method
    return jax.jit(lambda v, *x: model.linen_module.apply(v, *x, method=method, **flags))(variables, *inputs)


def call(model, method, inputs, flags):
    return (getattr(model, method) if method else model)(*inputs, **flags)


def compiles(fn):
    """(fn's result, how many programs the eager path compiled for it)."""
    before = _compiled_apply._cache_size()
    out = fn()
    return out, _compiled_apply._cache_size() - before


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eager_call_is_the_compiled_linen_apply(name):
    cls, config, calls = MODELS[name]
    model = cls.from_config(config)
    variables = bridge.to_linen_variables(model)
    # The programs are cached process-wide, per Linen module: another test may have compiled
    # this one already, and the first call here must be seen compiling.
    _compiled_apply.clear_cache()
    for method, inputs, flags in calls:
        out, new = compiles(lambda m=method, i=inputs, f=flags: call(model, m, i, f))
        assert new == 1, (method, flags)
        assert_same_tree(out, linen_apply(model, variables, *inputs, method=method, **flags))
        again, new = compiles(lambda m=method, i=inputs, f=flags: call(model, m, i, f))
        assert new == 0, (method, flags)
        assert_same_tree(again, out)


def test_one_program_per_input_shape_and_flag():
    # The programs are cached per Linen module and placement, process-wide.
    _compiled_apply.clear_cache()
    model = jimm_nnx.VisionTransformer.from_config(VIT, num_labels=7)
    model(IMAGES)
    _, new = compiles(lambda: [model(IMAGES[:1]), model(IMAGES[:1]), model(IMAGES)])
    assert new == 1
    _, new = compiles(lambda: [model(IMAGES, return_hidden_states=True), model(IMAGES, return_hidden_states=True)])
    assert new == 1
    # Another model of the same module and placement shares the programs.
    _, new = compiles(lambda: jimm_nnx.VisionTransformer.from_config(VIT, num_labels=7, rngs=nnx.Rngs(5))(IMAGES))
    assert new == 0


def test_replaced_parameters_reach_the_next_call():
    model = jimm_nnx.VisionTransformer.from_config(VIT)
    before = model(IMAGES)
    nnx.update(model, jax.tree.map(lambda p: p * 1.5, nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    out, new = compiles(lambda: model(IMAGES))
    assert new == 0
    assert_same_tree(out, linen_apply(model, bridge.to_linen_variables(model), IMAGES))
    assert not np.allclose(out, before)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])
def test_under_outer_nnx_jit(graph):
    model = jimm_nnx.VisionTransformer.from_config(VIT)
    traces = []

    @nnx.jit(graph=graph)
    def forward(model, x):
        traces.append(1)
        return model(x), model(x, return_hidden_states=True).hidden_states[-1]

    (logits, hidden), new = compiles(lambda: [forward(model, IMAGES) for _ in range(3)][-1])
    assert new == 0 and len(traces) == 1  # traced into the outer program, which compiles once
    assert_close(logits, model(IMAGES), rtol=1e-6)
    assert_close(hidden, model(IMAGES, return_hidden_states=True).hidden_states[-1], rtol=1e-6)


def _loss(logits):
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])


def test_grads_are_the_linen_grads():
    model = jimm_nnx.VisionTransformer.from_config(VIT)
    variables = bridge.to_linen_variables(model)
    want_loss, want = jax.value_and_grad(lambda p: _loss(model.linen_module.apply({"params": p}, IMAGES)))(
        variables["params"])
    loss, grads = nnx.value_and_grad(lambda m: _loss(m(IMAGES)))(model)  # eager grad: traced, as Linen's
    assert loss == want_loss
    assert_same_tree(nnx.to_pure_dict(grads), want)
    jit_loss, _ = nnx.jit(nnx.value_and_grad(lambda m: _loss(m(IMAGES))))(model)
    assert_close(jit_loss, want_loss, rtol=1e-6)
    jit_grads = nnx.jit(nnx.grad(lambda m: _loss(m(IMAGES))), graph=False)(model)
    jax.tree.map(lambda g, w: assert_close(g, w, rtol=1e-6), nnx.to_pure_dict(jit_grads), want)


def test_donated_training_step_then_eager_call():
    model = jimm_nnx.VisionTransformer.from_config(VIT)
    linen, params = model.linen_module, bridge.to_linen_variables(model)["params"]
    tx = optax.adamw(1e-2)

    @jax.jit
    def linen_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _loss(linen.apply({"params": p}, IMAGES)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m(IMAGES)))(model)
        optimizer.update(model, grads)
        return loss

    opt_state = tx.init(params)
    for _ in range(2):
        params, opt_state, want = linen_step(params, opt_state)
        assert_close(step(model, optimizer), want, rtol=1e-6)
    jax.tree.map(lambda p, w: assert_close(p, w, rtol=1e-5), nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)
    assert_same_tree(model(IMAGES), linen_apply(model, bridge.to_linen_variables(model), IMAGES))


def test_dropout_draws_from_the_model_streams():
    model = jimm_nnx.VisionTransformer.from_config(VIT, hidden_dropout_prob=0.5, rngs=nnx.Rngs(3))
    variables = bridge.to_linen_variables(model)
    streams = nnx.clone(model.to_nnx__rngs)  # the keys the two calls below must draw
    first, new = compiles(lambda: model(IMAGES, train=True))
    second, more = compiles(lambda: model(IMAGES, train=True))
    assert (new, more) == (1, 0)
    assert not np.allclose(first, second)
    for got in (first, second):
        want = jax.jit(lambda v, x, r: model.linen_module.apply(v, x, train=True, rngs=r))(
            variables, IMAGES, bridge.rng_streams(streams))
        assert_same_tree(got, want)
    assert model.to_nnx__rngs.default.count.get_value() == 2
    assert_same_tree(model(IMAGES), model(IMAGES))  # evaluation draws nothing
    assert model.to_nnx__rngs.default.count.get_value() == 2
    jitted = nnx.jit(lambda m, x: m(x, train=True))(model, IMAGES)
    assert model.to_nnx__rngs.default.count.get_value() == 3
    assert not np.allclose(jitted, second)


MESHES = {
    "auto": lambda: jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2),
    "explicit": lambda: jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Explicit,) * 2),
}


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_eager_call(mesh):
    mesh = MESHES[mesh]()
    plain = jimm_nnx.VisionTransformer.from_config(VIT, sharding=jimm_nnx.NoSharding())
    batch = jnp.concatenate([IMAGES] * 4)
    with jax.set_mesh(mesh):
        model = jimm_nnx.VisionTransformer.from_config(VIT)
        assert model.mesh is mesh
        x = jax.device_put(batch, NamedSharding(mesh, P(("data", "fsdp"))))
        _compiled_apply.clear_cache()  # another test may have run this model on this mesh
        out, new = compiles(lambda: model(x))
        assert new == 1
        assert_close(out, plain(batch), rtol=1e-6)
        _, new = compiles(lambda: model(x))
        assert new == 0
        assert_close(nnx.jit(lambda m, x: m(x))(model, x), out, rtol=1e-6)
    assert_same_tree(model(x), out)  # outside the `set_mesh` too


def test_committed_call_path_tables_are_what_the_results_regenerate(tmp_path):
    """benchmarks/RESULTS.md's nnx-call block is `benchmarks.nnx_call`'s rendering of the
    committed JSON lines (the latest run of each batch size)."""
    from pathlib import Path

    from benchmarks import nnx_call
    from benchmarks.report import _replace_block

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"
    tables = tmp_path / "RESULTS.md"
    tables.write_text(committed.read_text())
    _replace_block(tables, nnx_call.BEGIN, nnx_call.END, nnx_call.render(nnx_call.RESULTS))
    assert tables.read_text() == committed.read_text()
    block = committed.read_text().split(nnx_call.BEGIN)[1].split(nnx_call.END)[0]
    assert block.count("| model(x) eager |") >= 1 and "| native: nnx.jit graph mode (default) |" in block


def test_what_graph_mode_outputs():
    """`nnx.jit`'s default graph mode returns every Variable, a copy of all parameters per
    un-donated call, for a native NNX module as for a bridged one; `graph_updates=False` returns
    only the Variables that changed (dropout's rng count) and donation lets the copies reuse the
    model's buffers, so both cost what tree mode and `jax.jit(apply)` do."""
    model = jimm_nnx.VisionTransformer.from_config(VIT, hidden_dropout_prob=0.5)
    native = nnx.Sequential(nnx.Linear(16, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 16, rngs=nnx.Rngs(1)))
    x = jnp.ones((2, 16))

    def memory(jitted, *args):
        return jitted.lower(*args).compile().memory_analysis()

    for m, inputs, out_bytes in ((model, IMAGES, 2 * VIT.num_labels * 4), (native, x, x.nbytes)):
        param_bytes = sum(p.nbytes for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
        f = lambda m, x: m(x)
        assert memory(nnx.jit(f), m, inputs).output_size_in_bytes >= out_bytes + param_bytes
        assert memory(nnx.jit(f, graph=False), m, inputs).output_size_in_bytes == out_bytes
        assert memory(nnx.jit(f, graph_updates=False), m, inputs).output_size_in_bytes == out_bytes
        assert memory(nnx.jit(f, donate_argnums=0), m, inputs).alias_size_in_bytes >= param_bytes

    before = model.to_nnx__rngs.default.count.get_value()
    train = nnx.jit(lambda m, x: m(x, train=True), graph_updates=False)
    first, second = train(model, IMAGES), train(model, IMAGES)
    assert model.to_nnx__rngs.default.count.get_value() == before + 2 and not np.allclose(first, second)
