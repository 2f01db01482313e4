"""bridge: any jimm_linen module as an nnx.Module, placed by logical-axis rules; lossless
conversion of variables both ways; checkpoints shared between the Linen and NNX sides."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge
import jimm_linen
from jimm_linen.layers import DenseGeneral, Encoder
from jimm_linen.partitioning import make_rules, param_shardings, param_specs
from tests.helpers import assert_same_tree

VIT = jimm_linen.ViT(jimm_linen.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=48, image_size=16, patch_size=4, num_labels=5))
ENCODER = Encoder(VIT.config)  # a block, not a model: its config's dummy inputs are the ViT's


def random_variables(module, *inputs, seed=0):
    """Linen variables with random values, without compiling an init."""
    abstract = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), abstract)


def auto_mesh():
    return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def explicit_mesh():
    devices = np.array(jax.devices()).reshape(2, 4)
    return Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Explicit, AxisType.Explicit))


@pytest.fixture(scope="module")
def vit_variables():
    return random_variables(VIT, *VIT.config.dummy_inputs())


@pytest.mark.parametrize("mesh", [None, auto_mesh, explicit_mesh], ids=["unsharded", "auto", "explicit"])
def test_linen_nnx_linen_is_lossless(vit_variables, mesh):
    mesh = mesh and mesh()
    model = bridge.from_linen_variables(VIT, vit_variables, mesh=mesh)
    back = bridge.to_linen_variables(model)
    assert_same_tree(back, vit_variables)
    # The NNX state is the Linen params tree itself.
    assert_same_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)), vit_variables["params"])
    if mesh is not None:
        # One rule table: the very shardings the Linen side computes for these params.
        specs = param_specs(VIT, *VIT.config.dummy_inputs(), mesh=mesh, rules="fsdp")
        jax.tree.map(lambda v, s: np.testing.assert_equal(v.sharding, NamedSharding(mesh, s)),
                     back["params"], specs)
        assert back["params"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec \
            == P(None, "fsdp", None)


def test_orbax_checkpoints_cross_sides(vit_variables, tmp_path):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "linen", vit_variables)
    checkpointer.wait_until_finished()

    mesh = auto_mesh()
    shardings = param_shardings(VIT, *VIT.config.dummy_inputs(), mesh=mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          vit_variables, {"params": shardings})
    with jax.set_mesh(mesh):
        model = bridge.from_linen_variables(VIT, checkpointer.restore(tmp_path / "linen", target))
    assert_same_tree(bridge.to_linen_variables(model), vit_variables)
    kernel = model.Transformer["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].get_value()
    assert kernel.sharding == NamedSharding(mesh, P(None, "fsdp", None))

    # (Unsharded here: orbax compiles a transfer per sharded array, too slow for this test.)
    checkpointer.save(tmp_path / "nnx", bridge.to_linen_variables(bridge.from_linen_variables(VIT, vit_variables)))
    checkpointer.wait_until_finished()
    plain = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), vit_variables)
    assert_same_tree(checkpointer.restore(tmp_path / "nnx", plain), vit_variables)


def test_wrap_any_module_on_explicit_mesh():
    dense = DenseGeneral((2, 4), kernel_axes=("embed", "heads", "kv"))
    x, key = jnp.asarray(np.random.default_rng(2).standard_normal((8, 8), np.float32)), jax.random.key(3)
    ref_variables = nn.unbox(jax.jit(dense.init)(key, x))
    ref_out = dense.apply(ref_variables, x)

    mesh = explicit_mesh()
    with jax.set_mesh(mesh):
        model = bridge.wrap(dense, x, rngs=key)  # a key initialises exactly like dense.init(key, ...)
        assert_same_tree(bridge.to_linen_variables(model), ref_variables)
        assert model.kernel.get_value().sharding.spec == P("fsdp", None, None)

        out = nnx.jit(lambda m, x: m(x))(model, jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp")))))
        assert out.sharding.spec == P(("data", "fsdp"), None, None)  # outputs follow the batch rule
        np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-6)

        optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
        adam = optimizer.opt_state[0]
        for moment in (adam.mu, adam.nu):
            assert moment["kernel"].get_value().sharding == model.kernel.get_value().sharding
            assert moment["bias"].get_value().sharding == model.bias.get_value().sharding


def test_placement_takes_extended_rules_and_refuses_unknown_names():
    dense = DenseGeneral((2, 4), kernel_axes=("embed", "heads", "kv"))
    x, key = jnp.zeros((8, 8)), jax.random.key(3)
    rules = make_rules("fsdp", overrides={"embed": None}, additional_rules=[("kv", ["data"])])
    placement = bridge.Placement.resolve(explicit_mesh(), rules)
    assert placement.rules == rules and hash(placement)
    with jax.set_mesh(explicit_mesh()):
        model = bridge.wrap(dense, x, rngs=key, rules=rules)
        assert model.kernel.get_value().sharding.spec == P(None, None, "data")
        with pytest.raises(ValueError, match="unknown logical axis name 'kvv'"):
            bridge.wrap(DenseGeneral((2, 4), kernel_axes=("embed", "heads", "kvv")), x, rngs=key)
    with pytest.raises(ValueError, match="unknown logical axis name 'embd' in the rules"):
        bridge.Placement.resolve(None, [("embd", "fsdp")])


def test_unsharded_without_mesh_or_rules(vit_variables):
    model = bridge.from_linen_variables(VIT, vit_variables)
    assert model.mesh is None and not model.placement.sharded
    with jax.set_mesh(auto_mesh()):
        model = bridge.from_linen_variables(VIT, vit_variables, rules=None)
    assert model.mesh is None
    leaf = model.Transformer["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert "out_sharding" not in leaf.get_metadata()


def test_clear_errors(vit_variables):
    params = dict(vit_variables["params"])
    with pytest.raises(ValueError, match="missing \\[params/head/bias, params/head/kernel\\]"):
        bridge.from_linen_variables(VIT, {"params": {k: v for k, v in params.items() if k != "head"}})
    with pytest.raises(ValueError, match="unexpected \\[params/extra\\]"):
        bridge.from_linen_variables(VIT, {"params": {**params, "extra": jnp.zeros(1)}})
    wrong = {**params, "cls": jnp.zeros((1, 1, 8))}
    with pytest.raises(ValueError, match="cls has shape \\(1, 1, 8\\)"):
        bridge.from_linen_variables(VIT, {"params": wrong})
    with pytest.raises(TypeError, match="Linen variables dict"):
        bridge.from_linen_variables(VIT, params["cls"])
    with pytest.raises(ValueError, match="example_inputs"):
        bridge.from_linen_variables(ENCODER, {"params": {}})
    with pytest.raises(ValueError, match="needs rngs"):
        bridge.wrap(ENCODER, jnp.zeros((1, 4, 8)), rngs=None)
    with pytest.raises(TypeError, match="bridged model"):
        bridge.to_linen_variables(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        bridge.from_linen_variables(VIT, vit_variables, mesh=auto_mesh().abstract_mesh)
