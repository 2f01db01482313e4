"""Sharding of the Linen models on 8 fake CPU devices (tests/conftest.py sets XLA_FLAGS).

Covers: full N-D logical names on every parameter (golden table), the rule presets on full and
partial meshes (placed arrays really sharded, non-divisible dims replicated, sharded outputs equal
to unsharded ones), an optax AdamW train step under `jit` with sharded params and optimizer state,
the T5X `params_axes` adapter, `from_pretrained(mesh=...)`, and that the activations' logical
constraints really reach the compiled program (and vanish without a mesh).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.core import unfreeze
from flax.linen.partitioning import AxisMetadata, get_axis_names
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jimm_linen
from jimm_linen import partitioning as pt

# Every sharded dim divisible by 2, 4 and 8 (embed 32, mlp 64, kv 8), except heads=4 on an
# 8-way "tensor" axis, which checks the fallback to replication.
CFG = jimm_linen.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, image_size=16, patch_size=4, num_labels=5)
BATCH = 8
PRESETS = ("fsdp", "tp", "fsdp_tp", "replicated")

BLOCK = "Transformer/encoderblock"
ATTN = f"{BLOCK}/MultiHeadDotProductAttention_0"
QUERY, OUT = f"{ATTN}/query/kernel", f"{ATTN}/out/kernel"
MLP_IN, MLP_OUT = f"{BLOCK}/MlpBlock_0/Dense_0/kernel", f"{BLOCK}/MlpBlock_0/Dense_1/kernel"
PATCH, HEAD = "embedding/kernel", "head/kernel"

GOLDEN_NAMES = {
    QUERY: ("layers", "embed", "heads", "kv"),
    f"{ATTN}/query/bias": ("layers", "heads", "kv"),
    f"{ATTN}/key/kernel": ("layers", "embed", "heads", "kv"),
    f"{ATTN}/value/kernel": ("layers", "embed", "heads", "kv"),
    OUT: ("layers", "heads", "kv", "embed"),
    f"{ATTN}/out/bias": ("layers", "embed"),
    MLP_IN: ("layers", "embed", "mlp"),
    f"{BLOCK}/MlpBlock_0/Dense_0/bias": ("layers", "mlp"),
    MLP_OUT: ("layers", "mlp", "embed"),
    f"{BLOCK}/LayerNorm_0/scale": ("layers", "embed"),
    PATCH: ("patch_height", "patch_width", "channels", "embed"),
    "embedding/bias": ("embed",),
    "cls": (None, None, "embed"),
    "pos_embedding": (None, "length", "embed"),
    "Transformer/encoder_norm/scale": ("embed",),
    HEAD: ("embed", "classes"),
    "head/bias": ("classes",),
}

# Expected specs of the big kernels on the full (data=2, fsdp=2, tensor=2) mesh.
_ = None
GOLDEN_SPECS = {
    "fsdp": {QUERY: (_, "fsdp", _, _), OUT: (_, _, _, "fsdp"), MLP_IN: (_, "fsdp", _),
             MLP_OUT: (_, _, "fsdp"), PATCH: (_, _, _, "fsdp"), HEAD: ("fsdp", _)},
    "tp": {QUERY: (_, _, "tensor", _), OUT: (_, "tensor", _, _), MLP_IN: (_, _, "tensor"),
           MLP_OUT: (_, "tensor", _), PATCH: (_, _, _, _), HEAD: (_, _)},
    "fsdp_tp": {QUERY: (_, "fsdp", "tensor", _), OUT: (_, "tensor", _, "fsdp"),
                MLP_IN: (_, "fsdp", "tensor"), MLP_OUT: (_, "tensor", "fsdp"),
                PATCH: (_, _, _, "fsdp"), HEAD: ("fsdp", _)},
    "replicated": {QUERY: (_, _, _, _), OUT: (_, _, _, _), MLP_IN: (_, _, _),
                   MLP_OUT: (_, _, _), PATCH: (_, _, _, _), HEAD: (_, _)},
}

MESHES = {
    "dp2_fsdp2_tp2": ((2, 2, 2), ("data", "fsdp", "tensor")),
    "dp2_fsdp4": ((2, 4), ("data", "fsdp")),  # no "tensor": tp has nothing to split
    "fsdp8": ((8,), ("fsdp",)),  # no "data", no "tensor"
    "tp8": ((1, 1, 8), ("data", "fsdp", "tensor")),  # 4 heads on 8 devices: heads replicated
}

# (mesh, preset) -> expected specs of the big kernels on meshes that miss axes or do not divide.
PARTIAL_SPECS = {
    ("dp2_fsdp4", "tp"): {QUERY: (_, _, _, _), MLP_IN: (_, _, _), OUT: (_, _, _, _)},
    ("dp2_fsdp4", "fsdp_tp"): {QUERY: (_, "fsdp", _, _), MLP_IN: (_, "fsdp", _), OUT: (_, _, _, "fsdp")},
    ("fsdp8", "fsdp"): {QUERY: (_, "fsdp", _, _), MLP_OUT: (_, _, "fsdp"), HEAD: ("fsdp", _)},
    ("tp8", "tp"): {QUERY: (_, _, _, _), OUT: (_, _, _, _), MLP_IN: (_, _, "tensor"),
                    MLP_OUT: (_, "tensor", _)},
}

BATCH_SPEC = {"dp2_fsdp2_tp2": ("data", "fsdp"), "dp2_fsdp4": ("data", "fsdp"), "fsdp8": "fsdp",
              "tp8": ("data", "fsdp")}


def make_mesh(name: str, axis_type=None):
    shape, names = MESHES[name]
    types = None if axis_type is None else (axis_type,) * len(names)
    return jax.make_mesh(shape, names, axis_types=types)  # Explicit axes by default


def flat(tree) -> dict:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def padded(spec, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def random_params(model, images, seed: int = 0):
    """Random values of the right shapes without `model.init`: compiling the init's many
    random ops costs seconds on CPU, shapes from `eval_shape` cost nothing."""
    rng = np.random.default_rng(seed)
    abstract = nn.unbox(pt.abstract_variables(model, images)["params"])
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype), abstract)


@pytest.fixture(scope="module")
def vit():
    model = jimm_linen.ViT(CFG)
    images = jnp.asarray(np.random.default_rng(1).normal(
        size=(BATCH, CFG.image_size, CFG.image_size, 3)), jnp.float32)
    params = random_params(model, images)
    # Unsharded reference: no mesh, no rules, one device.
    ref = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
    return model, images, params, np.asarray(ref)


# --- logical names -------------------------------------------------------------------------

def test_every_param_has_full_logical_names(vit):
    model, images, params, _ = vit
    axes = flat(pt.logical_axes(model, images))
    shapes = {k: v.shape for k, v in flat(params).items()}
    assert set(axes) == set(shapes)
    for path, names in axes.items():
        assert len(names) == len(shapes[path]), (path, names, shapes[path])
        assert any(n is not None for n in names), path
        assert len({n for n in names if n is not None}) == len([n for n in names if n is not None]), \
            f"{path}: a logical name occurs twice in {names} (Flax's logical_to_mesh_axes rejects that)"
        scanned = path.startswith(f"{BLOCK}/")
        assert (names[0] == "layers") == scanned, (path, names)
        assert names.count("layers") == int(scanned), (path, names)
    for path, names in GOLDEN_NAMES.items():
        assert axes[path] == names, path


def test_logical_to_spec_matches_flax_resolution(vit):
    """Where every dim divides, our specs are Flax's `logical_to_mesh_axes` on the same rules."""
    model, images, _, _ = vit
    axes = flat(pt.logical_axes(model, images))
    for mesh_name in MESHES:
        mesh = make_mesh(mesh_name)
        for preset in PRESETS:
            rules = pt.rules_for_mesh(preset, mesh)
            for path, names in axes.items():
                ours = pt.logical_to_spec(names, preset, mesh)
                theirs = nn.logical_to_mesh_axes(names, rules)
                assert padded(ours, len(names)) == padded(theirs, len(names)), (mesh_name, preset, path)


def test_logical_to_spec_priority_and_fallbacks():
    mesh = make_mesh("dp2_fsdp4")
    # A mesh axis that does not divide is dropped; the rest of the rule still applies.
    assert pt.logical_to_spec(("batch", None), "fsdp", mesh, (8, 3)) == P(("data", "fsdp"), None)
    assert pt.logical_to_spec(("batch", None), "fsdp", mesh, (2, 3)) == P("data", None)
    assert pt.logical_to_spec(("batch", None), "fsdp", mesh, (3, 3)) == P(None, None)
    assert pt.logical_to_spec(("embed", "mlp"), "fsdp", mesh, (6, 8)) == P(None, None)
    # Rule order is priority across dims (like Flax): embed claims "fsdp" before mlp can.
    rules = (("embed", "fsdp"), ("mlp", "fsdp"))
    assert pt.logical_to_spec(("mlp", "embed"), rules, mesh, (8, 8)) == P(None, "fsdp")
    # A later rule for the same name is a fallback when the first does not divide.
    rules = (("embed", "fsdp"), ("embed", "data"))
    assert pt.logical_to_spec(("embed",), rules, mesh, (6,)) == P("data")
    # Missing mesh axes are dropped: "tensor" is not in this mesh.
    assert pt.logical_to_spec(("layers", "embed", "heads", "kv"), "fsdp_tp", mesh,
                              (2, 32, 4, 8)) == P(None, "fsdp", None, None)
    with pytest.raises(ValueError, match="unknown partitioning preset"):
        pt.get_rules("zero3")


def test_data_sharding_falls_back_for_small_batches():
    mesh = make_mesh("fsdp8")
    assert pt.data_sharding((8, 16, 16, 3), mesh, "fsdp").spec == P("fsdp", None, None, None)
    assert pt.data_sharding((4, 16, 16, 3), mesh, "fsdp").spec == P(None, None, None, None)
    assert pt.data_sharding((4, 16, 16, 3), mesh, "fsdp").mesh.axis_types == (AxisType.Auto,)


# --- presets: placement and sharded == unsharded ---------------------------------------------

CASES = [("dp2_fsdp2_tp2", p) for p in PRESETS] + list(PARTIAL_SPECS)


@pytest.mark.parametrize("mesh_name,preset", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_preset_shards_and_matches_unsharded(vit, mesh_name, preset):
    model, images, params, ref = vit
    mesh = make_mesh(mesh_name)
    p_sh = pt.param_shardings(model, images, mesh=mesh, rules=preset)
    x_sh = pt.data_sharding(images.shape, mesh, preset)
    out_sh = pt.data_sharding(ref.shape, mesh, preset)
    placed = flat(pt.shard_params(params, p_sh))

    expected = GOLDEN_SPECS[preset] if mesh_name == "dp2_fsdp2_tp2" else PARTIAL_SPECS[(mesh_name, preset)]
    for path, spec in expected.items():
        arr = placed[path]
        assert padded(arr.sharding.spec, arr.ndim) == spec, (path, arr.sharding.spec)
        # Really split: each device holds a smaller block (or the whole array when replicated).
        split = any(s is not None for s in spec)
        assert arr.sharding.is_fully_replicated == (not split), (path, spec)
        assert (arr.addressable_shards[0].data.size < arr.size) == split, (path, spec)
    assert x_sh.spec[0] == BATCH_SPEC[mesh_name]

    with pt.activation_sharding(mesh, preset):
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x), in_shardings=(p_sh, x_sh),
                     out_shardings=out_sh)
        out = fn(pt.shard_params(params, p_sh), jax.device_put(images, x_sh))
    assert out.sharding.spec == out_sh.spec
    assert max_diff(out, ref) <= 1e-5


def test_auto_mesh_works_too(vit):
    model, images, params, ref = vit
    mesh = make_mesh("dp2_fsdp2_tp2", AxisType.Auto)
    assert pt.auto_mesh(mesh) is mesh
    p_sh = pt.param_shardings(model, images, mesh=mesh, rules="fsdp_tp")
    x_sh = pt.data_sharding(images.shape, mesh, "fsdp_tp")
    with pt.activation_sharding(mesh, "fsdp_tp"):
        out = jax.jit(lambda p, x: model.apply({"params": p}, x), in_shardings=(p_sh, x_sh))(
            pt.shard_params(params, p_sh), jax.device_put(images, x_sh))
    assert max_diff(out, ref) <= 1e-5


def test_boxed_variables_apply_under_a_mesh(vit):
    """`model.init` output (boxed) applied directly: `unbox` constrains with Flax's own resolution."""
    model, images, params, ref = vit
    boxed = pt.abstract_variables(model, images)["params"]
    variables = {"params": jax.tree.map(lambda b, v: b.replace_boxed(v), boxed, params,
                                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))}
    assert isinstance(variables["params"]["head"]["kernel"], nn.LogicallyPartitioned)
    mesh = make_mesh("dp2_fsdp2_tp2")
    with pt.activation_sharding(mesh, "fsdp_tp"):
        out = jax.jit(model.apply)(variables, images)
    assert max_diff(out, ref) <= 1e-5


# --- training ---------------------------------------------------------------------------------

def test_adamw_train_step_sharded(vit):
    model, images, params, _ = vit
    mesh, rules = make_mesh("dp2_fsdp2_tp2"), "fsdp_tp"
    tx = optax.adamw(1e-2, weight_decay=1e-4)
    labels = jnp.arange(BATCH) % CFG.num_labels

    p_sh = pt.param_shardings(model, images, mesh=mesh, rules=rules)
    o_sh = pt.optimizer_shardings(tx, model, images, mesh=mesh, rules=rules)
    x_sh = pt.data_sharding(images.shape, mesh, rules)
    y_sh = pt.data_sharding(labels.shape, mesh, rules)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, o, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    # copy=True: the step donates its params, which must not delete the fixture's arrays.
    sharded_params = pt.shard_params(params, p_sh, copy=True)
    with pt.activation_sharding(mesh, rules):
        opt_state = jax.jit(tx.init, out_shardings=o_sh)(sharded_params)
        train_step = jax.jit(step, in_shardings=(p_sh, o_sh, x_sh, y_sh),
                             out_shardings=(p_sh, o_sh, None), donate_argnums=(0, 1))
        x, y = jax.device_put(images, x_sh), jax.device_put(labels, y_sh)
        p, o, losses = sharded_params, opt_state, []
        for _ in range(5):
            p, o, loss = train_step(p, o, x, y)
            losses.append(float(loss))

    param_specs = {k: padded(v.sharding.spec, v.ndim) for k, v in flat(p).items()}
    assert param_specs[QUERY] == GOLDEN_SPECS[rules][QUERY]
    for moment in ("mu", "nu"):
        tree = flat(optax.tree_utils.tree_get(o, moment))
        assert set(tree) == set(param_specs)
        for path, arr in tree.items():
            assert padded(arr.sharding.spec, arr.ndim) == param_specs[path], (moment, path)
    assert optax.tree_utils.tree_get(o, "count").sharding.spec == P()

    # The first loss is the unsharded model's loss; then the loss goes down on the fixed batch.
    assert abs(losses[0] - float(loss_fn(params, images, labels))) <= 1e-5
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0], losses


# --- T5X ---------------------------------------------------------------------------------------

def test_t5x_params_axes(vit):
    model, images, params, _ = vit
    axes = pt.logical_axes(model, images)
    params_axes = pt.t5x_params_axes(axes)
    flat_axes = flat(params_axes)
    assert all(k.endswith("_axes") for k in flat_axes)
    assert all(isinstance(v, AxisMetadata) for v in flat_axes.values())
    assert flat_axes[QUERY + "_axes"].names == ("layers", "embed", "heads", "kv")
    # What T5X's partitioner does with the collection: strip "_axes", PartitionSpecs of names.
    names = unfreeze(get_axis_names(params_axes))
    assert jax.tree.structure(names, is_leaf=lambda x: isinstance(x, P)) == \
        jax.tree.structure(params)
    flat_names, flat_params = flat(names), flat(params)
    for path, spec in flat_names.items():
        assert tuple(spec) == tuple(flat(axes)[path])
        assert len(spec) == flat_params[path].ndim


# --- from_pretrained with a mesh ---------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.ViTConfig(**{k: v for k, v in CFG.to_hf_config().items()
                                       if k not in ("architectures", "model_type")})
    hf = transformers.ViTForImageClassification(hf_cfg).eval()
    directory = tmp_path_factory.mktemp("vit_hf")
    hf.save_pretrained(directory)
    images = np.random.RandomState(0).randn(BATCH, CFG.image_size, CFG.image_size, 3).astype(np.float32)
    with torch.no_grad():
        logits = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    return directory, images, logits


def test_from_pretrained_with_mesh(hf_checkpoint):
    directory, images, torch_logits = hf_checkpoint
    mesh = make_mesh("dp2_fsdp2_tp2")
    model, variables = jimm_linen.from_pretrained(directory, mesh=mesh, rules="fsdp")
    placed = flat(variables["params"])
    for path, spec in GOLDEN_SPECS["fsdp"].items():
        assert padded(placed[path].sharding.spec, placed[path].ndim) == spec, path
    expected = pt.param_shardings(model, images, mesh=mesh, rules="fsdp")
    for path, sharding in flat(expected).items():
        assert placed[path].sharding == sharding, path

    plain_model, plain = jimm_linen.from_pretrained(directory)
    ref = plain_model.apply(plain, images)
    x_sh = pt.data_sharding(images.shape, mesh, "fsdp")
    with pt.activation_sharding(mesh, "fsdp"):
        out = jax.jit(lambda v, x: model.apply(v, x))(variables, jax.device_put(images, x_sh))
    assert out.sharding.spec[0] == ("data", "fsdp")
    assert max_diff(out, ref) <= 1e-5
    assert max_diff(out, torch_logits) <= 1e-5 * max(1.0, float(np.abs(torch_logits).max()))


# --- activation constraints --------------------------------------------------------------------

_CONSTRAINT = re.compile(r"sdy\.sharding_constraint.*|custom_call @Sharding.*")


def _constraints(hlo: str) -> list[str]:
    return [m.group(0) for m in _CONSTRAINT.finditer(hlo)]


def test_activation_constraints_reach_the_program(vit):
    model, images, params, ref = vit
    mesh = make_mesh("dp2_fsdp2_tp2")
    fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731

    with pt.activation_sharding(mesh, "tp"):
        hlo = jax.jit(fn).lower(params, images).as_text()
    found = _constraints(hlo)
    assert found, "no sharding constraint in the lowered program"
    # batch over (data, fsdp) everywhere; heads (dim 2 of [B, T, N, H]) and mlp over tensor.
    assert all('"data", "fsdp"' in c or "devices=" in c for c in found), found
    heads = [c for c in found if re.search(r'\[\{"data", "fsdp"\}, \{\}, \{"tensor"\}, \{\}\]', c)]
    mlp = [c for c in found if re.search(r'\[\{"data", "fsdp"\}, \{\}, \{"tensor"\}\]', c)]
    assert heads and mlp, found

    # Without a mesh: no constraint at all, and the model runs unsharded, jitted or not.
    assert not _constraints(jax.jit(fn).lower(params, images).as_text())
    with nn.logical_axis_rules(pt.get_rules("tp")):  # rules but no mesh: still a no-op
        assert not _constraints(jax.jit(fn).lower(params, images).as_text())
        out = model.apply({"params": params}, images)
    assert max_diff(out, ref) <= 1e-5
    out = model.apply({"params": params}, images)
    assert len(out.sharding.device_set) == 1
    assert max_diff(out, ref) <= 1e-5


# --- names and extension -------------------------------------------------------------------------

# The presets as they were before the decoder names and `make_rules`, written out: every vision
# parameter, input and activation must resolve under today's presets exactly as under these.
_OLD_DP = (("act_batch", ("data", "fsdp")), ("batch", ("data", "fsdp")))
_OLD_TP = _OLD_DP + (("act_heads", "tensor"), ("act_mlp", "tensor"), ("heads", "tensor"), ("mlp", "tensor"),
                     ("vocab", "tensor"))
OLD_RULES = {"replicated": _OLD_DP, "fsdp": _OLD_DP + (("embed", "fsdp"),), "tp": _OLD_TP,
             "fsdp_tp": _OLD_TP + (("embed", "fsdp"),)}
# "ep" differs from fsdp_tp only on experts, which no vision model has.
OLD_EQUIVALENT = {**{p: p for p in OLD_RULES}, "ep": "fsdp_tp"}

_SIGLIP = jimm_linen.SigLIPConfig.from_variants("mu/4", image_size=16, vocab_size=64, max_position_embeddings=8)
_CLIP = jimm_linen.CLIPConfig.from_variants("mu/4", "mu", image_size=16, vocab_size=64, max_position_embeddings=8,
                                            projection_dim=24, eos_token_id=3)
_IMAGES, _IDS = jnp.zeros((BATCH, 16, 16, 3)), jnp.zeros((BATCH, 8), jnp.int32)
VISION_MODELS = {
    "vit": (jimm_linen.ViT(CFG), (_IMAGES,)),
    "vit_loop_map_pooler": (jimm_linen.ViT(jimm_linen.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=5, pooling="map", pooler=True), scan=False), (_IMAGES,)),
    "clip": (jimm_linen.CLIP(_CLIP), (_IMAGES, _IDS)),
    "siglip": (jimm_linen.SigLIP(_SIGLIP), (_IMAGES, _IDS)),
}


def _traced(model, inputs):
    """The boxed abstract params of `model` and the logical names its activation constraints
    use (recorded while `init` traces the forward pass)."""
    seen, constrain = set(), nn.with_logical_constraint

    def record(x, names, *args, **kwargs):
        seen.add(tuple(names))
        return constrain(x, names, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn, "with_logical_constraint", record)
        boxed = pt.abstract_variables(model, *inputs)["params"]
    return boxed, seen


def _specs_under(boxed, rules, mesh):
    return flat(jax.tree.map(lambda b: pt.logical_to_spec(b.names, rules, mesh, b.value.shape), boxed,
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))


@pytest.fixture(scope="module")
def traced_models():
    return {name: _traced(model, inputs) for name, (model, inputs) in VISION_MODELS.items()}


def test_presets_keep_every_vision_spec(traced_models):
    for model_name, (boxed, act_names) in traced_models.items():
        assert act_names, model_name
        for mesh_name in MESHES:
            mesh = make_mesh(mesh_name)
            for preset, old in OLD_EQUIVALENT.items():
                assert flat(pt.tree_specs(boxed, mesh, preset)) == _specs_under(boxed, OLD_RULES[old], mesh), \
                    (model_name, mesh_name, preset)
                for names in act_names:  # activations: Flax's resolution of the rules
                    assert nn.logical_to_mesh_axes(names, pt.rules_for_mesh(preset, mesh)) == \
                        nn.logical_to_mesh_axes(names, pt.rules_for_mesh(OLD_RULES[old], mesh)), (names, preset)
                for shape in ((8, 16, 16, 3), (8, 8), (4, 8)):
                    assert pt.data_sharding(shape, mesh, preset) == pt.data_sharding(shape, mesh, OLD_RULES[old])
    boxed = traced_models["vit"][0]
    specs = flat(pt.tree_specs(boxed, make_mesh("dp2_fsdp2_tp2"), "fsdp"))
    assert specs["head/kernel"] == P("fsdp", None) and specs["embedding/bias"] == P("fsdp")
    specs = flat(pt.tree_specs(boxed, make_mesh("dp2_fsdp2_tp2"), "ep"))
    assert specs[MLP_IN] == P(None, "fsdp", "tensor")


def test_every_name_the_models_use_is_known(traced_models):
    known = pt.known_logical_names()
    for model_name, (boxed, act_names) in traced_models.items():
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        used = {n for leaf in leaves for n in leaf.names} | {n for names in act_names for n in names}
        assert used - {None} <= known, (model_name, used - known)
    for preset in pt.PRESETS:
        assert {name for name, _ in pt.PRESETS[preset]} <= known, preset


def test_make_rules_additional_rules_win():
    mesh = make_mesh("dp2_fsdp2_tp2")
    assert pt.make_rules() == pt.get_rules("fsdp") == pt.PRESETS["fsdp"]
    rules = pt.make_rules("fsdp_tp", additional_rules=[("mlp", "fsdp"), ("heads", ["data", "tensor"])])
    assert rules == (("mlp", "fsdp"), ("heads", ("data", "tensor"))) + pt.PRESETS["fsdp_tp"]
    # mlp takes "fsdp" before embed can; the preset's mlp -> tensor is now only a fallback.
    assert pt.logical_to_spec(("layers", "embed", "mlp"), rules, mesh, (2, 32, 64)) == P(None, None, "fsdp")
    assert pt.logical_to_spec(("layers", "embed", "heads", "kv"), rules, mesh, (2, 32, 4, 8)) == \
        P(None, "fsdp", ("data", "tensor"), None)
    assert pt.logical_to_spec(("layers", "embed", "heads", "kv"), rules, mesh, (2, 32, 2, 8)) == \
        P(None, "fsdp", "data", None)  # 2 heads: "tensor" does not divide after "data", dropped
    # A rule table given as the base is extended the same way.
    assert pt.make_rules((("embed", "fsdp"),), additional_rules=[("mlp", "tensor")]) == \
        (("mlp", "tensor"), ("embed", "fsdp"))


def test_make_rules_overrides_replace():
    mesh = make_mesh("dp2_fsdp2_tp2")
    base = pt.PRESETS["fsdp_tp"]
    rules = pt.make_rules("fsdp_tp", overrides={"embed": ("data", "fsdp"), "heads": None, "experts": "tensor"})
    assert [name for name, _ in rules] == [name for name, _ in base] + ["experts"]  # places kept
    assert [axes for name, axes in rules if name == "embed"] == [("data", "fsdp")]
    assert [axes for name, axes in rules if name == "heads"] == [None]
    assert pt.logical_to_spec(("layers", "embed", "heads", "kv"), rules, mesh, (2, 32, 4, 8)) == \
        P(None, ("data", "fsdp"), None, None)
    assert pt.logical_to_spec(("experts", "embed", "mlp"), rules, mesh, (4, 32, 64)) == \
        P(None, ("data", "fsdp"), "tensor")  # rule order: mlp takes "tensor" before experts
    # Every rule for the name goes, fallbacks too.
    assert pt.make_rules((("embed", "fsdp"), ("mlp", "tensor"), ("embed", "data")), overrides={"embed": "tensor"}) == \
        (("embed", "tensor"), ("mlp", "tensor"))


def test_extended_rules_are_taken_wherever_rules_are(vit):
    model, images, _, _ = vit
    mesh = make_mesh("dp2_fsdp2_tp2")
    rules = pt.make_rules("fsdp", additional_rules=[("act_mlp", "tensor")], overrides={"batch": "data"})
    p_sh = flat(pt.param_shardings(model, images, mesh=mesh, rules=rules))
    assert p_sh[QUERY].spec == P(None, "fsdp", None, None)
    assert pt.data_sharding(images.shape, mesh, rules).spec == P("data", None, None, None)
    with pt.activation_sharding(mesh, rules):
        assert nn.logical_to_mesh_axes(("act_batch", "act_length", "act_mlp")) == P(("data", "fsdp"), None, "tensor")


def test_unknown_names_are_errors():
    mesh = make_mesh("dp2_fsdp2_tp2")
    with pytest.raises(ValueError, match=r"name 'mpl' in \('embed', 'mpl'\); known names: .*embed"):
        pt.logical_to_spec(("embed", "mpl"), "fsdp", mesh)

    class Frames(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("w", nn.with_logical_partitioning(nn.initializers.ones_init(), ("frames", "embed")),
                                  (4, 8))

    x = jnp.zeros((2, 4, 8))
    with pytest.raises(ValueError, match="unknown logical axis name 'frames'"):  # a parameter
        pt.param_shardings(Frames(), x, mesh=mesh, rules="fsdp")
    with pytest.raises(ValueError, match="unknown logical axis name 'act_btach'"):  # an input / output
        pt.data_sharding((8, 3), mesh, "fsdp", names=("act_btach", None))
    # Rule tables: given directly, as additions, as overrides.
    for bad in ([("embd", "fsdp")], (("embed", "fsdp"), ("act_embd", "tensor"))):
        with pytest.raises(ValueError, match="unknown logical axis name '(act_)?embd' in the rules"):
            pt.get_rules(bad)
        with pytest.raises(ValueError, match="unknown logical axis name"):
            pt.param_shardings(jimm_linen.ViT(CFG), _IMAGES, mesh=mesh, rules=bad)
        with pytest.raises(ValueError, match="unknown logical axis name"), pt.activation_sharding(mesh, bad):
            pass
    with pytest.raises(ValueError, match="unknown logical axis name 'embd' in the rules"):
        pt.make_rules("fsdp", additional_rules=[("embd", "fsdp")])
    with pytest.raises(ValueError, match="unknown logical axis name 'embd' in the overrides"):
        pt.make_rules("fsdp", overrides={"embd": "fsdp"})
    with pytest.raises(ValueError, match="mesh axes must be"):
        pt.get_rules([("embed", 2)])
    # None is a replicated dim, not a name.
    assert pt.logical_to_spec((None, "embed"), "fsdp", mesh, (3, 8)) == P(None, "fsdp")


def test_registered_names_work(monkeypatch):
    monkeypatch.setattr(pt, "_registered_names", set())  # registrations stay in this test
    mesh = make_mesh("dp2_fsdp2_tp2")
    with pytest.raises(ValueError, match="register_logical_names"):
        pt.logical_to_spec(("frames", "embed"), "fsdp", mesh, (4, 8))
    pt.register_logical_names("frames", "act_frames")
    assert {"frames", "act_frames"} <= pt.known_logical_names()
    assert pt.logical_to_spec(("frames", "embed"), "fsdp", mesh, (4, 8)) == P(None, "fsdp")
    rules = pt.make_rules("fsdp", additional_rules=[("frames", "tensor")])
    assert pt.logical_to_spec(("frames", "embed"), rules, mesh, (4, 8)) == P("tensor", "fsdp")
    for bad in ("", 3):
        with pytest.raises(ValueError, match="non-empty strings"):
            pt.register_logical_names(bad)


def test_decoder_names_resolve():
    mesh = make_mesh("dp2_fsdp2_tp2")
    dp = ("data", "fsdp")
    assert pt.logical_to_spec(("layers", "embed", "kv_heads", "kv"), "tp", mesh, (2, 32, 2, 8)) == \
        P(None, None, "tensor", None)
    assert pt.logical_to_spec(("layers", "embed", "kv_heads", "kv"), "fsdp_tp", mesh, (2, 32, 2, 8)) == \
        P(None, "fsdp", "tensor", None)
    # One kv head (MQA) does not divide: replicated.
    assert pt.logical_to_spec(("layers", "embed", "kv_heads", "kv"), "tp", mesh, (2, 32, 1, 8)) == \
        P(None, None, None, None)
    assert pt.logical_to_spec(("act_batch", "act_length", "act_kv_heads", "act_kv"), "tp", mesh) == \
        P(dp, None, "tensor", None)
    cache = ("layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_kv")
    assert pt.logical_to_spec(cache, "tp", mesh, (2, 8, 16, 2, 8)) == P(None, dp, None, "tensor", None)
    assert pt.logical_to_spec(cache, "fsdp", mesh, (2, 8, 16, 2, 8)) == P(None, dp, None, None, None)
    assert pt.logical_to_spec(("cache_batch",), "replicated", mesh, (8,)) == P(dp)
    assert pt.logical_to_spec(("act_batch", "act_length", "act_vocab"), "tp", mesh) == P(dp, None, "tensor")
    # Experts: split like dense kernels, except under "ep", where whole experts go over "tensor".
    experts = ("experts", "embed", "mlp")
    assert pt.logical_to_spec(experts, "fsdp_tp", mesh, (4, 32, 64)) == P(None, "fsdp", "tensor")
    assert pt.logical_to_spec(experts, "ep", mesh, (4, 32, 64)) == P("tensor", "fsdp", None)
    assert pt.logical_to_spec(("embed", "experts"), "ep", mesh, (32, 4)) == P("fsdp", "tensor")
    assert pt.logical_to_spec(("act_experts", "act_length", "act_embed"), "ep", mesh) == P("tensor", None, None)


def test_activation_constraints_refuse_unknown_names():
    """The models constrain activations through `constrain`, which checks the names when the
    model is traced (Flax's own constraint would replicate an unknown name)."""

    class Probe(nn.Module):
        names: tuple

        @nn.compact
        def __call__(self, x):
            return pt.constrain(x, self.names)

    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(Probe(("act_batch", "act_embed")).apply({}, x), x)
    with pytest.raises(ValueError, match=r"unknown logical axis name 'act_frames' in an activation constraint"):
        Probe(("act_batch", "act_frames")).apply({}, x)
