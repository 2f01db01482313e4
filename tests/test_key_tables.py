"""Key tables that say what HF stores (jimm_linen/checkpoint/keys.py, engine.py): experts stacked
from one HF key each (strict, read slice-wise, unstacked on save), `Fused` on any axis, GPT-2's
`Conv1D` kernels, tied heads compared not guessed, integer tensors cast to float parameters."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from safetensors.numpy import save_file

from jimm_linen import checkpoint as ckpt
from jimm_linen.checkpoint import engine
from jimm_linen.checkpoint.keys import (
    FLATTEN, CheckpointError, Conv1DKernel, Fused, KeyMap, LinearKernel, Permute, Rule, Source, StackedSource, experts,
    linear,
)
from jimm_linen.layers.stack import scan_to_loop

LAYERS, EXPERTS, EMBED, MLP = 2, 4, 6, 10
EXPERT_KEY = "model.layers.{i}.mlp.experts.{e}.{name}_proj.weight"


class Experts(nn.Module):
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def param(name, names, shape):
            init = nn.with_logical_partitioning(nn.initializers.normal(), names)
            return self.param(name, init, shape, self.param_dtype)

        gate = param("gate", ("experts", "embed", "mlp"), (EXPERTS, EMBED, MLP))
        down = param("down", ("experts", "mlp", "embed"), (EXPERTS, MLP, EMBED))
        return x + jnp.einsum("bef,efd->bd", jnp.einsum("bd,edf->bef", x, gate), down), None


class TinyMoE(nn.Module):
    scan: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.scan:
            x, _ = nn.scan(Experts, variable_axes={"params": 0}, split_rngs={"params": True}, length=LAYERS,
                           metadata_params={nn.PARTITION_NAME: "layers"})(self.param_dtype, name="layers")(x)
        else:
            for i in range(LAYERS):
                x, _ = Experts(self.param_dtype, name=f"layers_{i}")(x)
        return x * self.param("norm", nn.initializers.ones, (EMBED,), self.param_dtype)


MOE_KEYS = KeyMap([Rule(EXPERT_KEY.replace("{name}", "gate"), "layers_{i}/gate", LinearKernel()),
                   Rule(EXPERT_KEY.replace("{name}", "down"), "layers_{i}/down", LinearKernel()),
                   Rule("model.norm.weight", "norm")])


def moe_state(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {"model.norm.weight": rng.standard_normal(EMBED).astype(np.float32)}
    for i in range(LAYERS):
        for e in range(EXPERTS):
            state[EXPERT_KEY.format(i=i, e=e, name="gate")] = rng.standard_normal((MLP, EMBED)).astype(np.float32)
            state[EXPERT_KEY.format(i=i, e=e, name="down")] = rng.standard_normal((EMBED, MLP)).astype(np.float32)
    return state


class Recording:
    """A region reader that records every (key, ((start, stop) per dim)) it serves."""

    def __init__(self, reader):
        self.reader, self.reads = reader, []

    def dtype(self, key):
        return self.reader.dtype(key)

    def get_region(self, key, index):
        shape = self.reader.shapes[key]
        self.reads.append((key, tuple(s.indices(n)[:2] for s, n in zip(index, shape))))
        return self.reader.get_region(key, index)


def load_state(state, keymap, module, tmp_path, **kwargs):
    """`engine.load` of `module` from `state` written as a safetensors file; also the reads."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    target = engine.Target.of(module, jnp.zeros((1, EMBED)))
    with ckpt.StateReader(tmp_path) as reader:
        recording = Recording(reader)
        plan = ckpt.plan_load(reader.shapes, keymap, target.loop_shapes)
        variables = engine.load(target, recording, plan, **kwargs)
    return jax.tree.map(np.asarray, variables["params"]), recording.reads


def mesh_sharding(**axes):
    """`(logical names, shape) -> NamedSharding` on 8 devices, mesh axis `x` of 4 and `y` of 2,
    logical axis name -> mesh axis from `axes`."""
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    return lambda names, shape: NamedSharding(mesh, PartitionSpec(*(axes.get(n) for n in names or ())))


# --- experts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_experts_stack_on_load_and_unstack_on_save_bit_exact(scan, tmp_path):
    state = moe_state()
    params, _ = load_state(state, MOE_KEYS, TinyMoE(scan=scan), tmp_path)
    loop = scan_to_loop(params) if scan else params
    gate = loop["layers_1"]["gate"]
    assert gate.shape == (EXPERTS, EMBED, MLP)
    for e in range(EXPERTS):  # expert e's torch Linear (out, in), transposed, at index e
        np.testing.assert_array_equal(gate[e], state[EXPERT_KEY.format(i=1, e=e, name="gate")].T)
    back = ckpt.linen_to_hf(ckpt.flatten_tree(loop), MOE_KEYS)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def expected_moe():
    return engine.Target.of(TinyMoE(scan=False), jnp.zeros((1, EMBED))).loop_shapes


@pytest.mark.parametrize("damage,kind,named", [
    (lambda s: s.pop(EXPERT_KEY.format(i=1, e=2, name="down")), "missing keys",
     [EXPERT_KEY.format(i=1, e=2, name="down") + " (-> layers_1/down[2])"]),
    (lambda s: s.update({EXPERT_KEY.format(i=0, e=EXPERTS, name="gate"): np.zeros((MLP, EMBED), np.float32)}),
     "unexpected keys", [EXPERT_KEY.format(i=0, e=EXPERTS, name="gate"), "layers_0/gate[4]"]),
    (lambda s: s.update({EXPERT_KEY.format(i=0, e=3, name="gate"): np.zeros((MLP, EMBED + 1), np.float32)}),
     "mis-shaped keys", [EXPERT_KEY.format(i=0, e=3, name="gate") + f": checkpoint ({MLP}, {EMBED + 1}), model "
                         f"expects ({MLP}, {EMBED}) (-> layers_0/gate[3])"]),
], ids=["missing", "extra", "misshaped"])
def test_expert_keys_are_strict(damage, kind, named):
    shapes = {k: v.shape for k, v in moe_state().items()}
    ckpt.plan_load(shapes, MOE_KEYS, expected_moe())
    state = moe_state()
    damage(state)
    with pytest.raises(CheckpointError, match=kind) as err:
        ckpt.plan_load({k: v.shape for k, v in state.items()}, MOE_KEYS, expected_moe())
    message = str(err.value)
    assert all(n in message for n in named), message
    # Only the damaged key is named: the other experts of that parameter are fine.
    assert len(re.findall(r"experts\.\d+\.", message)) == 1, message


def test_a_box_of_experts_reads_only_their_keys():
    shapes = {k: v.shape for k, v in moe_state().items()}
    source = ckpt.plan_load(shapes, MOE_KEYS, expected_moe())["layers_0/gate"]
    assert isinstance(source, StackedSource)
    state, reads = moe_state(), []
    box = (slice(2, 3), slice(0, EMBED), slice(0, MLP // 2))
    got = source.read_region(lambda key, index: reads.append(key) or state[key][index], (EXPERTS, EMBED, MLP), box)
    np.testing.assert_array_equal(got[0], state[EXPERT_KEY.format(i=0, e=2, name="gate")].T[:, :MLP // 2])
    assert reads == [EXPERT_KEY.format(i=0, e=2, name="gate")]


def test_sharded_experts_each_device_reads_only_its_experts(tmp_path):
    state = moe_state()
    want, _ = load_state(state, MOE_KEYS, TinyMoE(), tmp_path / "plain")
    got, reads = load_state(state, MOE_KEYS, TinyMoE(), tmp_path / "sharded",
                            sharding=mesh_sharding(experts="x", mlp="y"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    by_key: dict[str, list] = {}
    for key, region in reads:
        by_key.setdefault(key, []).append(region)
    assert sorted(by_key) == sorted(state)
    for key, regions in by_key.items():
        if ".experts." in key:  # one expert per device row; its mlp halves on the two devices of the row
            assert sorted(regions) == sorted(
                [((0, MLP // 2), (0, EMBED)), ((MLP // 2, MLP), (0, EMBED))] if "gate" in key
                else [((0, EMBED), (0, MLP // 2)), ((0, EMBED), (MLP // 2, MLP))]), (key, regions)


# --- both expert layouts: the hub's per-expert Linears, transformers 5's 3-D tensors ---------------

class GatedExperts(nn.Module):
    """`layers.moe.MoeBlock`'s expert kernels (`wi_0`, `wi_1`, `wo`), in each of `LAYERS` layers."""

    @nn.compact
    def __call__(self, x):
        for i in range(LAYERS):
            ExpertKernels(name=f"layers_{i}")()
        return x


class ExpertKernels(nn.Module):
    @nn.compact
    def __call__(self):
        for name, names, shape in (("wi_0", ("embed", "mlp"), (EMBED, MLP)), ("wi_1", ("embed", "mlp"), (EMBED, MLP)),
                                   ("wo", ("mlp", "embed"), (MLP, EMBED))):
            init = nn.with_logical_partitioning(nn.initializers.normal(), ("experts", *names))
            self.param(name, init, (EXPERTS, *shape))


HUB_NAMES = {"wi_0": "w1", "wi_1": "w3", "wo": "w2"}  # Mixtral's gate, up, down
GATED_KEYS = KeyMap(*experts("model.layers.{i}.mlp.experts", "layers_{i}", HUB_NAMES))


def gated_states(seed=0):
    """The same experts in both layouts: `(per-expert state, fused state)`."""
    rng = np.random.default_rng(seed)
    hub, fused = {}, {}
    for i in range(LAYERS):
        gate, up = (rng.standard_normal((EXPERTS, MLP, EMBED)).astype(np.float32) for _ in range(2))
        down = rng.standard_normal((EXPERTS, EMBED, MLP)).astype(np.float32)
        for e in range(EXPERTS):
            for name, w in (("w1", gate), ("w3", up), ("w2", down)):
                hub[f"model.layers.{i}.mlp.experts.{e}.{name}.weight"] = w[e]
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = np.concatenate([gate, up], axis=1)
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = down
    return hub, fused


def test_both_expert_layouts_load_the_same_params_and_the_hub_layout_is_written(tmp_path):
    hub, fused = gated_states()
    from_hub, _ = load_state(hub, GATED_KEYS, GatedExperts(), tmp_path / "hub")
    from_fused, _ = load_state(fused, GATED_KEYS, GatedExperts(), tmp_path / "fused")
    jax.tree.map(np.testing.assert_array_equal, from_fused, from_hub)
    # Expert 2's gate as its torch Linear (out, in), transposed.
    np.testing.assert_array_equal(from_hub["layers_1"]["wi_0"][2], hub["model.layers.1.mlp.experts.2.w1.weight"].T)
    np.testing.assert_array_equal(from_hub["layers_1"]["wo"][2], hub["model.layers.1.mlp.experts.2.w2.weight"].T)
    back = ckpt.linen_to_hf(ckpt.flatten_tree(from_fused), GATED_KEYS)
    assert sorted(back) == sorted(hub)
    for key, value in hub.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_fused_expert_tensor_is_read_only_for_the_experts_a_device_holds(tmp_path):
    _, fused = gated_states()
    want, _ = load_state(fused, GATED_KEYS, GatedExperts(), tmp_path / "plain")
    got, reads = load_state(fused, GATED_KEYS, GatedExperts(), tmp_path / "sharded", sharding=mesh_sharding(experts="x"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    for key, region in reads:  # experts split 4 ways: one expert's rows at a time, never the whole tensor
        assert region[0][1] - region[0][0] == 1, (key, region)
    assert len(reads) == 3 * LAYERS * EXPERTS  # gate, up and down of each expert, read once


def test_both_expert_layouts_for_one_layer_are_an_error_naming_them():
    hub, fused = gated_states()
    shapes = {k: v.shape for k, v in {**hub, **{k: v for k, v in fused.items() if ".1." in k}}.items()}
    expected = engine.Target.of(GatedExperts(), jnp.zeros((1, EMBED))).loop_shapes
    with pytest.raises(CheckpointError, match=r"keys naming the same parameter: .*model\.layers\.1\.mlp\.experts\."
                                              r"gate_up_proj and model\.layers\.1\.mlp\.experts\.0\.w1\.weight"):
        ckpt.plan_load(shapes, GATED_KEYS, expected)


# --- Fused on any axis, GPT-2's Conv1D -------------------------------------------------------------

HEADS, HEAD_DIM = 2, 4
D = HEADS * HEAD_DIM
GPT2 = KeyMap([
    *(r for part, name in enumerate(("query", "key", "value")) for r in (
        Rule("h.{i}.attn.c_attn.weight", f"h_{{i}}/attn/{name}/kernel", Fused(Conv1DKernel(), part, 3, axis=1)),
        Rule("h.{i}.attn.c_attn.bias", f"h_{{i}}/attn/{name}/bias", Fused(FLATTEN, part, 3)))),
    Rule("h.{i}.attn.c_proj.weight", "h_{i}/attn/out/kernel", Conv1DKernel(in_dims=2)),
])
GPT2_SHAPES = {**{f"h_0/attn/{n}/kernel": (D, HEADS, HEAD_DIM) for n in ("query", "key", "value")},
               **{f"h_0/attn/{n}/bias": (HEADS, HEAD_DIM) for n in ("query", "key", "value")},
               "h_0/attn/out/kernel": (HEADS, HEAD_DIM, D)}


def gpt2_state():
    rng = np.random.default_rng(3)
    return {"h.0.attn.c_attn.weight": rng.standard_normal((D, 3 * D)).astype(np.float32),
            "h.0.attn.c_attn.bias": rng.standard_normal(3 * D).astype(np.float32),
            "h.0.attn.c_proj.weight": rng.standard_normal((D, D)).astype(np.float32)}


def test_fused_conv1d_on_axis_1_reads_slices_and_round_trips():
    state = gpt2_state()
    plan = ckpt.plan_load({k: v.shape for k, v in state.items()}, GPT2, GPT2_SHAPES)

    def read_whole(path):
        shape = GPT2_SHAPES[path]
        return plan[path].read_region(lambda k, i: state[k][i], shape, tuple(slice(0, n) for n in shape))

    params = {path: read_whole(path) for path in GPT2_SHAPES}
    # GPT-2: qkv = x @ c_attn.weight + c_attn.bias, then split on the last axis.
    x = np.random.default_rng(4).standard_normal((3, D)).astype(np.float32)
    qkv = np.split(x @ state["h.0.attn.c_attn.weight"] + state["h.0.attn.c_attn.bias"], 3, axis=-1)
    for name, want in zip(("query", "key", "value"), qkv):
        ours = np.einsum("bd,dhk->bhk", x, params[f"h_0/attn/{name}/kernel"]) + params[f"h_0/attn/{name}/bias"]
        np.testing.assert_allclose(ours.reshape(3, D), want, rtol=1e-5, atol=1e-5, err_msg=name)
    heads = np.einsum("bd,dhk->bhk", x, params["h_0/attn/value/kernel"])
    np.testing.assert_allclose(np.einsum("bhk,hkd->bd", heads, params["h_0/attn/out/kernel"]),
                               heads.reshape(3, D) @ state["h.0.attn.c_proj.weight"], rtol=1e-5, atol=1e-5)

    # One head of the key kernel reads just its columns of the key third.
    reads = []
    one_head = plan["h_0/attn/key/kernel"].read_region(lambda k, i: reads.append(i) or state[k][i],
                                                       (D, HEADS, HEAD_DIM), (slice(0, D), slice(1, 2), slice(0, 4)))
    np.testing.assert_array_equal(one_head, params["h_0/attn/key/kernel"][:, 1:2])
    assert [(s.start, s.stop) for s in reads[0]] == [(0, D), (D + HEAD_DIM, D + 2 * HEAD_DIM)]

    back = ckpt.linen_to_hf(params, GPT2)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


# (transform, Linen shape, the dims a cut of which reads exactly the box: a head dim is read whole)
BOXES = [(Fused(Conv1DKernel(), 2, 3, axis=1), (D, HEADS, HEAD_DIM), {0, 1}),
         (Conv1DKernel(in_dims=2), (HEADS, HEAD_DIM, D), {0, 2}),
         (Fused(LinearKernel(), 1, 2, axis=1), (D, 6), {0, 1}), (Fused(FLATTEN, 1, 3), (HEADS, HEAD_DIM), {0}),
         (Permute((0, 2, 1)), (EXPERTS, EMBED, MLP), {0, 1, 2}),
         (Fused(Permute((0, 2, 1)), 1, 2, axis=1), (EXPERTS, EMBED, MLP), {0, 1, 2})]


@pytest.mark.parametrize("transform,shape,exact", BOXES,
                         ids=["fused-conv1d-axis1", "conv1d-in2", "fused-linear-axis1", "fused-flat", "permute-experts",
                              "fused-permute-experts"])
def test_every_box_reads_only_the_region_that_covers_it(transform, shape, exact):
    hf = np.random.default_rng(0).standard_normal(transform.hf_shape(shape)).astype(np.float32)
    whole = transform.to_linen(hf, shape)
    mine = np.split(hf, transform.parts, transform.axis)[transform.part] if isinstance(transform, Fused) else hf
    np.testing.assert_array_equal(transform.to_hf(whole), mine)
    halves = [[slice(0, n), slice(0, n // 2), slice(n // 2, n)] for n in shape]
    for index in np.ndindex(*(3,) * len(shape)):
        box = tuple(h[j] for h, j in zip(halves, index))
        reads = []
        got = transform.read_region(lambda r: reads.append(r) or hf[r], shape, box)
        np.testing.assert_array_equal(got, whole[box])
        size = int(np.prod([s.stop - s.start for s in reads[0]]))
        cut = {d for d, j in enumerate(index) if j}
        assert size == whole[box].size if cut <= exact else size <= mine.size, (box, reads)


# --- tied heads ---------------------------------------------------------------------------------

class Embedder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x @ self.param("embedding", nn.initializers.normal(), (EMBED, EMBED))


def tied_keys(**kwargs):
    # The untied head's rule stays in the table: the tie wins over it.
    return KeyMap([Rule("model.embed_tokens.weight", "embedding"), *linear("lm_head", "logits_dense")], **kwargs)


def test_tied_head_equal_loads_different_is_an_error_naming_both(tmp_path):
    keymap = tied_keys(tied={"lm_head.weight": "model.embed_tokens.weight"})
    table = np.random.default_rng(5).standard_normal((EMBED, EMBED)).astype(np.float32)
    for case, state in [("absent", {"model.embed_tokens.weight": table}),
                        ("equal", {"model.embed_tokens.weight": table, "lm_head.weight": table.copy()})]:
        params, reads = load_state(state, keymap, Embedder(), tmp_path / case)
        np.testing.assert_array_equal(params["embedding"], table)
        assert [k for k, _ in reads].count("model.embed_tokens.weight") == 1 + (case == "equal"), reads

    other = table.copy()
    other[3, 2] += 0.5
    state = {"model.embed_tokens.weight": table, "lm_head.weight": other}
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from model\.embed_tokens\.weight "
                                              r"\(max abs difference 0\.5\)"):
        load_state(state, keymap, Embedder(), tmp_path / "different")
    # `ignore` still skips the key unread, whatever it holds.
    params, reads = load_state(state, tied_keys(ignore=[r"lm_head\.weight"]), Embedder(), tmp_path / "different")
    assert "lm_head.weight" not in {k for k, _ in reads}

    shapes = {"model.embed_tokens.weight": (EMBED, EMBED), "lm_head.weight": (EMBED + 1, EMBED)}
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: .*lm_head\.weight: .* tied to model\.embed_tokens"):
        ckpt.plan_load(shapes, keymap, {"embedding": (EMBED, EMBED)})


def test_a_subtree_keeps_the_ties_of_its_own_keys():
    keymap = KeyMap([Rule("text.embed.weight", "txt/embedding"), Rule("vision.embed.weight", "img/embedding")],
                    tied={"text.head.weight": "text.embed.weight"})
    shapes = {"text.embed.weight": (2, 2), "vision.embed.weight": (2, 2), "text.head.weight": (2, 2)}
    assert ckpt.plan_load(shapes, keymap.subtree("txt/"), {"embedding": (2, 2)}).tied == (
        ("text.head.weight", "text.embed.weight", (2, 2)),)
    assert ckpt.plan_load(shapes, keymap.subtree("img/"), {"embedding": (2, 2)}).tied == ()


# --- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "mesh8"])
def test_an_integer_tensor_loads_as_the_float_parameter_dtype(sharded, tmp_path):
    state = moe_state()
    state["model.norm.weight"] = np.arange(EMBED, dtype=np.int32)
    state[EXPERT_KEY.format(i=0, e=1, name="down")] = np.ones((EMBED, MLP), np.int64)
    sharding = mesh_sharding(experts="x") if sharded else None
    params, _ = load_state(state, MOE_KEYS, TinyMoE(), tmp_path, sharding=sharding)
    assert {str(a.dtype) for a in jax.tree.leaves(params)} == {"float32"}
    np.testing.assert_array_equal(params["norm"], np.arange(EMBED, dtype=np.float32))
    np.testing.assert_array_equal(params["layers"]["down"][0, 1], np.ones((MLP, EMBED), np.float32))
    jax.grad(lambda p: TinyMoE().apply({"params": p}, jnp.ones((1, EMBED))).sum())(params)


def test_bf16_stays_bf16_and_an_integer_tensor_takes_a_bf16_parameter_dtype(tmp_path):
    state = {k: v.astype(ml_dtypes.bfloat16) for k, v in moe_state().items()}
    state["model.norm.weight"] = np.arange(EMBED, dtype=np.int32)
    f32, _ = load_state(state, MOE_KEYS, TinyMoE(), tmp_path)  # param_dtype=None keeps what is stored
    assert f32["layers"]["gate"].dtype == jnp.bfloat16 and f32["norm"].dtype == jnp.float32
    bf16, _ = load_state(state, MOE_KEYS, TinyMoE(param_dtype=jnp.bfloat16), tmp_path)
    assert {str(a.dtype) for a in jax.tree.leaves(bf16)} == {"bfloat16"}
    np.testing.assert_array_equal(np.asarray(bf16["norm"], np.float32), np.arange(EMBED))


def test_rules_that_cannot_be_written_are_refused():
    with pytest.raises(ValueError, match="Linen template has slots their HF template lacks"):
        KeyMap([Rule("experts.weight", "experts_{e}/kernel")])
    assert Rule(EXPERT_KEY, "layers_{i}/{name}").stacked == ("e",)
    assert isinstance(ckpt.plan_load({"a": (2,)}, KeyMap([Rule("a", "b")]), {"b": (2,)})["b"], Source)
