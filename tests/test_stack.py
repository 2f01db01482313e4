"""The generic layer stack: scan and loop agree, per-layer state is carried through the scan
(how a decoder threads its KV cache), remat changes nothing numerically, and the layout
conversions work for any stacked block name."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimm_linen.layers import DenseGeneral, loop_to_scan, scan_groups, scan_to_loop, stack


@flax.struct.dataclass
class Seen:
    """What every toy layer sees: an array and a static Python value (remat must not trace it)."""

    scale: jax.Array
    deterministic: bool = flax.struct.field(pytree_node=False, default=True)


class CachedBlock(nn.Module):
    """A toy decoder layer: reads its slice of a per-layer cache, writes a new one."""

    features: int

    @nn.compact
    def __call__(self, x, shared, cache):
        assert shared.deterministic is True  # static: still a Python bool inside scan and remat
        y = DenseGeneral(self.features, kernel_axes=("embed", "mlp"), name="proj")(x)
        new_cache = cache + y.sum(axis=1, keepdims=True)  # [B, 1, D]: depends on the layer's input
        return x + shared.scale * jnp.tanh(y) + new_cache, new_cache


class Stacked(nn.Module):
    scan: bool
    remat: str = "none"
    name_: str = "decoderblock"

    @nn.compact
    def __call__(self, x, cache):
        run = stack(CachedBlock, length=3, name=self.name_, scan=self.scan, remat=self.remat, features=x.shape[-1])
        return run(x, Seen(jnp.float32(0.5)), cache)


def _inputs():
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 5, 8), jnp.float32)
    cache = jnp.asarray(rng.randn(3, 2, 1, 8), jnp.float32)  # [layers, B, 1, D]
    return x, cache


def test_scan_and_loop_carry_the_same_per_layer_state():
    x, cache = _inputs()
    scanned = Stacked(scan=True)
    params = nn.unbox(scanned.init(jax.random.key(0), x, cache)["params"])
    assert params["decoderblock"]["proj"]["kernel"].shape == (3, 8, 8)
    out_scan, cache_scan = scanned.apply({"params": params}, x, cache)

    loop_params = scan_to_loop(params, names=("decoderblock",))
    assert sorted(loop_params) == ["decoderblock_0", "decoderblock_1", "decoderblock_2"]
    out_loop, cache_loop = Stacked(scan=False).apply({"params": loop_params}, x, cache)

    # Layer by layer in plain JAX: each layer sees its own cache slice and the previous output.
    h, want = x, []
    for i in range(3):
        k = params["decoderblock"]["proj"]
        y = h @ k["kernel"][i] + k["bias"][i]
        c = cache[i] + y.sum(axis=1, keepdims=True)
        h = h + 0.5 * jnp.tanh(y) + c
        want.append(c)
    np.testing.assert_allclose(out_scan, h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache_scan, jnp.stack(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out_loop, out_scan)
    np.testing.assert_array_equal(cache_loop, cache_scan)


@pytest.mark.parametrize("remat", ["full", "minimal", "dots_saveable"])
def test_remat_changes_no_number(remat):
    x, cache = _inputs()
    params = nn.unbox(Stacked(scan=True).init(jax.random.key(0), x, cache)["params"])

    def loss(p, model):
        out, new_cache = model.apply({"params": p}, x, cache)
        return (out ** 2).sum() + new_cache.sum()

    for scan in (True, False):
        p = params if scan else scan_to_loop(params, names=("decoderblock",))
        plain = jax.value_and_grad(loss)(p, Stacked(scan=scan))
        remat_ = jax.value_and_grad(loss)(p, Stacked(scan=scan, remat=remat))
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat_)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


class WideBlock(CachedBlock):
    """Another kind of layer (its parameters differ: a gate beside the projection)."""

    @nn.compact
    def __call__(self, x, shared, cache):
        gate = self.param("gate", nn.initializers.normal(), (x.shape[-1],))
        x, new_cache = CachedBlock(self.features, name="inner")(x, shared, cache)
        return x * jax.nn.sigmoid(gate), new_cache


class Mixed(nn.Module):
    scan: bool = False
    remat: str = "none"

    @nn.compact
    def __call__(self, x, cache):
        run = stack((CachedBlock, WideBlock, CachedBlock), length=3, name="layers", scan=self.scan, remat=self.remat,
                    features=x.shape[-1])
        return run(x, Seen(jnp.float32(0.5)), cache)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_layers_of_different_classes_run_in_a_loop(remat):
    x, cache = _inputs()
    params = nn.unbox(Mixed(remat=remat).init(jax.random.key(0), x, cache)["params"])
    assert sorted(params["layers_1"]) == ["gate", "inner"] and sorted(params["layers_2"]) == ["proj"]
    out, new_cache = Mixed(remat=remat).apply({"params": params}, x, cache)
    h, want = x, []
    for i, block in enumerate((CachedBlock(8), WideBlock(8), CachedBlock(8))):
        h, c = block.apply({"params": params[f"layers_{i}"]}, h, Seen(jnp.float32(0.5)), cache[i])
        want.append(c)
    np.testing.assert_allclose(out, h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_cache, jnp.stack(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"nn.scan runs one block class; layers of classes \['CachedBlock', "
                                         r"'WideBlock'\] run with scan=False"):
        Mixed(scan=True).init(jax.random.key(0), x, cache)


def test_layout_conversions_for_any_block_names():
    rng = np.random.RandomState(1)
    tree = {"enc": {"encoderblock": {"w": rng.randn(2, 3)}, "norm": {"scale": rng.randn(3)}},
            "dec": {"decoderblock": {"w": rng.randn(4, 3), "b": rng.randn(4, 2)}}}
    names = ("encoderblock", "decoderblock")
    loop = scan_to_loop(tree, names=names)
    assert sorted(loop["enc"]) == ["encoderblock_0", "encoderblock_1", "norm"]
    assert sorted(loop["dec"]) == [f"decoderblock_{i}" for i in range(4)]
    np.testing.assert_array_equal(loop["dec"]["decoderblock_2"]["b"], tree["dec"]["decoderblock"]["b"][2])
    back = loop_to_scan(loop, names=names)
    jax.tree.map(np.testing.assert_array_equal, back, tree)
    # Only the named blocks are stacked: `MlpBlock_0`-style module names are left alone.
    assert loop_to_scan({"MlpBlock_0": {"w": 1.0}}, names=names) == {"MlpBlock_0": {"w": 1.0}}
    flat = ["dec/decoderblock_1/w", "dec/decoderblock_0/w", "enc/norm/scale"]
    assert scan_groups(flat, names=names) == {"dec/decoderblock/w": ["dec/decoderblock_0/w", "dec/decoderblock_1/w"],
                                              "enc/norm/scale": ["enc/norm/scale"]}
    with pytest.raises(ValueError, match="decoderblock indices are not 0..N-1"):
        loop_to_scan({"decoderblock_0": {"w": 1.0}, "decoderblock_2": {"w": 2.0}}, names=names)
