"""jimm_nnx.VisionTransformer: parity with HF PyTorch and the Linen ViT, checkpoints both ways,
and sharded training on 8 fake CPU devices (Auto and Explicit meshes)."""

import collections
import inspect
import re

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest
import torch
import transformers
from flax import nnx
from flax.traverse_util import flatten_dict
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge
import jimm_linen
from jimm_linen.partitioning import make_rules
from tests.helpers import assert_close, assert_same_tree
from jimm_nnx import NoSharding, Sharding, VisionTransformer, make_tokamax_attention

# hidden 32, heads 4 and mlp 48 all divide the 4-way fsdp and 2-way tensor axes used below.
CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              image_size=16, patch_size=4, num_labels=5, initializer_range=0.2)
BATCH = 8


def forward(model, images, **kwargs):
    return nnx.jit(lambda m, x: m(x, **kwargs))(model, images)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(checkpoint dir, NHWC images, PyTorch logits) for a small random HF ViT classifier."""
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**CONFIG)).eval()
    directory = tmp_path_factory.mktemp("vit")
    hf.save_pretrained(directory)
    pixels = np.random.default_rng(0).standard_normal((BATCH, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        logits = hf(torch.from_numpy(pixels)).logits.numpy()
    return directory, jnp.asarray(pixels.transpose(0, 2, 3, 1)), logits


@pytest.fixture(scope="module")
def unsharded_logits(reference):
    directory, images, _ = reference
    return np.asarray(forward(VisionTransformer.from_pretrained(directory, sharding=NoSharding()), images))


def test_matches_pytorch_and_linen(reference, unsharded_logits):
    directory, images, ref_logits = reference
    assert_close(unsharded_logits, ref_logits)

    module, variables = jimm_linen.from_pretrained(directory)
    linen_logits = jax.jit(module.apply)(variables, images)
    assert_close(unsharded_logits, linen_logits, rtol=1e-6)

    model = VisionTransformer.from_pretrained(directory, sharding=NoSharding())
    out = forward(model, images, return_hidden_states=True)
    assert isinstance(out, jimm_linen.TowerOutput)
    assert len(out.hidden_states) == CONFIG["num_hidden_layers"] + 1
    assert_close(out.output, unsharded_logits, rtol=1e-6)


def test_checkpoints_cross_between_nnx_linen_and_transformers(reference, tmp_path):
    directory, images, ref_logits = reference
    model = VisionTransformer.from_pretrained(directory, sharding=NoSharding())

    model.save_pretrained(tmp_path / "nnx")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "nnx").eval()
    with torch.no_grad():
        logits = hf(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).logits.numpy()
    assert_close(logits, ref_logits, rtol=1e-6)
    _, linen_variables = jimm_linen.from_pretrained(tmp_path / "nnx")
    assert_same_tree(linen_variables, bridge.to_linen_variables(model))

    module, variables = jimm_linen.from_pretrained(directory)
    jimm_linen.save_pretrained(module, variables, tmp_path / "linen")
    restored = VisionTransformer.from_pretrained(tmp_path / "linen", sharding=NoSharding())
    assert_same_tree(bridge.to_linen_variables(restored), variables)


def test_from_config_initialises_and_handles_dropout():
    hf_config = {**CONFIG, "model_type": "vit", "architectures": ["ViTForImageClassification"],
                 "hidden_dropout_prob": 0.5}
    model = VisionTransformer.from_config(hf_config, rngs=nnx.Rngs(0))  # no mesh: unsharded
    assert model.mesh is None and model.config.num_labels == CONFIG["num_labels"]
    assert model.head["kernel"].shape == (CONFIG["hidden_size"], CONFIG["num_labels"])
    assert model.Transformer["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (2, 32, 48)

    run = nnx.jit(lambda m, x: (m(x), m(x, train=True), m(x, train=True)))
    evaluated, first, second = run(model, jnp.ones((2, 16, 16, 3)))
    assert not np.allclose(first, evaluated) and not np.allclose(first, second)  # dropout, fresh masks


def test_from_config_rejects_bad_input():
    with pytest.raises(ValueError, match="model_type"):
        VisionTransformer.from_config({"model_type": "clip"})
    with pytest.raises(TypeError, match="config must be"):
        VisionTransformer.from_config(42)
    with pytest.raises(TypeError, match="sharding must be"):
        VisionTransformer.from_config({**CONFIG, "model_type": "vit"}, sharding=object())
    with pytest.raises(ValueError, match="unknown partitioning preset"):
        VisionTransformer.from_config({**CONFIG, "model_type": "vit"}, sharding=Sharding(rules="zero"))
    with pytest.raises(ValueError, match="unknown logical axis name 'embd' in the rules"):
        VisionTransformer.from_config({**CONFIG, "model_type": "vit"}, sharding=Sharding(rules=[("embd", "fsdp")]))
    with pytest.raises(ValueError, match="unknown remat policy"):
        VisionTransformer.from_config({**CONFIG, "model_type": "vit"}, use_gradient_checkpointing="some")


def test_surface(reference):
    assert make_tokamax_attention is jimm_linen.make_tokamax_attention
    for build in (VisionTransformer.from_config, VisionTransformer.from_pretrained):
        # A fresh nnx.Rngs per call, never a shared default object.
        assert inspect.signature(build).parameters["rngs"].default is None
    model = VisionTransformer.from_pretrained(reference[0], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                              use_gradient_checkpointing=True, sharding=NoSharding())
    assert model.linen_module.remat_policy == "full" and model.linen_module.dtype == jnp.bfloat16
    assert model.head["kernel"].get_value().dtype == jnp.bfloat16


def auto_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def explicit_recipe_mesh():
    # jimm's documented FSDP recipe.
    devices = np.array(jax.devices()).reshape(2, 4)
    return Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Explicit, AxisType.Explicit))


KERNELS = {  # Linen path -> expected spec per case; the scanned `layers` axis stays whole.
    "fsdp": {
        "MultiHeadDotProductAttention_0/query/kernel": P(None, "fsdp", None, None),
        "MultiHeadDotProductAttention_0/out/kernel": P(None, None, None, "fsdp"),
        "MlpBlock_0/Dense_0/kernel": P(None, "fsdp", None),
        "MlpBlock_0/Dense_1/kernel": P(None, None, "fsdp"),
    },
    "fsdp+mlp": {
        "MultiHeadDotProductAttention_0/query/kernel": P(None, "fsdp", None, None),
        "MultiHeadDotProductAttention_0/out/kernel": P(None, None, None, "fsdp"),
        "MlpBlock_0/Dense_0/kernel": P(None, None, "fsdp"),
        "MlpBlock_0/Dense_1/kernel": P(None, "fsdp", None),
    },
    # jimm's ViTSharding (the default): each kernel split on its contracting dim, attention-out whole.
    "vit": {
        "MultiHeadDotProductAttention_0/query/kernel": P(None, "fsdp", None, None),
        "MultiHeadDotProductAttention_0/out/kernel": P(None, None, None, None),
        "MlpBlock_0/Dense_0/kernel": P(None, "fsdp", None),
        "MlpBlock_0/Dense_1/kernel": P(None, "fsdp", None),
    },
    "fsdp_tp": {
        "MultiHeadDotProductAttention_0/query/kernel": P(None, "fsdp", "tensor", None),
        "MultiHeadDotProductAttention_0/out/kernel": P(None, "tensor", None, "fsdp"),
        "MlpBlock_0/Dense_0/kernel": P(None, "fsdp", "tensor"),
        "MlpBlock_0/Dense_1/kernel": P(None, "tensor", "fsdp"),
    },
}

MESHES = {  # case -> (mesh, sharding= argument, rule preset it means, run a train step)
    "auto-fsdp": (lambda: auto_mesh((2, 4), ("data", "fsdp")), "fsdp", "fsdp", False),
    "auto-fsdp_tp": (lambda: auto_mesh((2, 2, 2), ("data", "fsdp", "tensor")), Sharding(rules="fsdp_tp"),
                     "fsdp_tp", True),
    "explicit-vit": (explicit_recipe_mesh, None, "vit", True),
    # An extended preset goes where a preset does: mlp takes "fsdp" ahead of embed.
    "auto-fsdp+mlp": (lambda: auto_mesh((2, 4), ("data", "fsdp")),
                      Sharding(rules=make_rules("fsdp", additional_rules=[("mlp", "fsdp")])), "fsdp+mlp", False),
}


@pytest.mark.parametrize("case", sorted(MESHES))
def test_sharded_model(case, reference, unsharded_logits):
    directory, images, _ = reference
    make_mesh, sharding, rules, train = MESHES[case]
    mesh = make_mesh()
    with jax.set_mesh(mesh):
        model = VisionTransformer.from_pretrained(directory, sharding=sharding)  # default: ViTSharding
        block = flatten_dict(model.Transformer["encoderblock"], sep="/")
        for path, spec in KERNELS[rules].items():
            assert block[path].get_value().sharding.spec == spec, path
            assert block[path].get_metadata()["out_sharding"] == tuple(spec)

        optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
        assert_optimizer_follows_params(model, optimizer, exact=True)

        batch = NamedSharding(mesh, P(("data", "fsdp")))
        x = jax.device_put(images, batch)
        if not train:
            assert_close(forward(model, x), unsharded_logits)
            return
        labels = jax.device_put(jnp.arange(BATCH) % CONFIG["num_labels"], batch)

        @nnx.jit
        def train_step(model, optimizer, x, y):
            def loss_fn(model):
                logits = model(x, train=True)  # no dropout in CONFIG: the eval logits
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

            (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            optimizer.update(model, grads)
            return loss, logits

        first, logits = train_step(model, optimizer, x, labels)
        assert_close(logits, unsharded_logits)
        second, _ = train_step(model, optimizer, x, labels)
        assert np.isfinite(first) and second < first
        assert_optimizer_follows_params(model, optimizer, exact=False)
        assert block["MlpBlock_0/Dense_0/kernel"].get_value().sharding.is_equivalent_to(
            NamedSharding(mesh, KERNELS[rules]["MlpBlock_0/Dense_0/kernel"]), 3)


def assert_optimizer_follows_params(model, optimizer, exact):
    """Adam's mu and nu sit on their param's sharding (a jitted step may return an equivalent
    spec spelled differently on Auto meshes, e.g. without trailing Nones)."""
    params = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), sep="/")
    adam = optimizer.opt_state[0]
    for name in ("mu", "nu"):
        state = flatten_dict(nnx.to_pure_dict(getattr(adam, name)), sep="/")
        assert state.keys() == params.keys()
        for path, value in params.items():
            if exact:
                assert state[path].sharding == value.sharding, (name, path)
            else:
                assert state[path].sharding.is_equivalent_to(value.sharding, value.ndim), (name, path)
    sharded = [p for p in params.values() if not p.sharding.is_fully_replicated]
    assert sharded, "no parameter is sharded"


def test_no_sharding_under_a_mesh(reference, unsharded_logits):
    """Every parameter replicated on the mesh; the model still runs there, on a batch sharded
    on "data" too (it raised ShardingTypeError in the patch embedding under Explicit axes)."""
    directory, images, _ = reference
    mesh = explicit_recipe_mesh()
    with jax.set_mesh(mesh):
        model = VisionTransformer.from_pretrained(directory, sharding=NoSharding())
        for value in jax.tree.leaves(bridge.to_linen_variables(model)):
            assert value.sharding.is_fully_replicated and value.sharding.mesh == mesh
        assert model.mesh is mesh
        assert_close(forward(model, images), unsharded_logits)
        x = jax.device_put(images, NamedSharding(mesh, P("data")))
        for out in (forward(model, x), model(x)):
            assert out.sharding.spec == P("data", None)
            assert_close(out, unsharded_logits)


def _ops(lowered) -> collections.Counter:
    return collections.Counter(re.findall(r"\b(stablehlo\.\w+|sdy\.\w+)", lowered.as_text()))


def test_bridge_adds_no_computation(reference):
    """A jitted NNX forward lowers to the same ops as `jax.jit` of the Linen `apply`; `nnx.jit`
    adds only sharding annotations (NNX constrains its own rng key), never arithmetic."""
    directory, images, _ = reference
    model = VisionTransformer.from_pretrained(directory, sharding=NoSharding())
    linen, variables = model.linen_module, bridge.to_linen_variables(model)
    linen_ops = _ops(jax.jit(lambda v, x: linen.apply(v, x)).lower(variables, images))
    graph, state = nnx.split(model)
    assert _ops(jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, images)) == linen_ops
    extra = _ops(nnx.jit(lambda m, x: m(x)).lower(model, images)) - linen_ops
    assert all(op.startswith(("sdy.", "stablehlo.mesh")) for op in extra), extra
    assert not linen_ops - _ops(nnx.jit(lambda m, x: m(x)).lower(model, images))


def test_tree_mode_nnx_jit_returns_only_the_outputs(reference):
    """`nnx.jit` in its default graph mode returns every Variable of the model as an output, so
    an inference call writes a copy of all parameters (what the benchmarks' jimm_nnx+graph_mode
    entry pays); tree mode (`graph=False`) outputs exactly what the Linen `jax.jit(apply)` does."""
    directory, images, _ = reference
    model = VisionTransformer.from_pretrained(directory, sharding=NoSharding())
    linen, variables = model.linen_module, bridge.to_linen_variables(model)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(variables))

    def output_bytes(jitted, *args):
        return jitted.lower(*args).compile().memory_analysis().output_size_in_bytes

    linen_out = output_bytes(jax.jit(lambda v, x: linen.apply(v, x)), variables, images)
    assert output_bytes(nnx.jit(lambda m, x: m(x), graph=False), model, images) == linen_out
    assert output_bytes(nnx.jit(lambda m, x: m(x)), model, images) >= linen_out + param_bytes
    assert_close(nnx.jit(lambda m, x: m(x), graph=False)(model, images), linen.apply(variables, images))
