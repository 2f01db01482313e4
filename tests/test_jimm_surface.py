"""`import jimm_nnx as jimm`: the `jimm` library's names, module paths, signatures and return
values, its per-model sharding specs, and the bugs that running jimm's own suite found."""

import dataclasses
import importlib
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge
import jimm_nnx as jimm
from jimm_nnx import reference as parity
from jimm_linen.layers import dot_product_attention
from tests.helpers import assert_close, assert_same_tree, nhwc

VIT_HF = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              image_size=16, patch_size=4)


def mesh_2x4(kind):
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"), axis_types=(kind, kind))


def reference(family, tmp_path, seed=0):
    """An HF CLIP / SigLIP with every tensor random, saved to `tmp_path`, and inputs for it."""
    name, cfg = next(iter(parity.DEFAULTS[family].items()))
    ref = parity.build_reference(family, cfg, tmp_path, seed=seed)
    t = ref.config.text_config
    pixels = parity.random_images(3, ref.config.vision_config.image_size, 3, seed=seed)
    ids, _ = parity.random_text(2, t.max_position_embeddings, t.vocab_size, t.eos_token_id, t.pad_token_id, seed)
    return ref, pixels, ids


# --- names, paths, signatures -----------------------------------------------------------------

# jimm 0.4.0's `jimm.__all__`, less the DINO model classes (their family lands on its own).
JIMM_NAMES = ["tokamax_attention", "make_tokamax_attention", "autotune", "cached_autotune", "autotuned_fn",
              "load_autotune_result", "AutotuningResult", "VisionTransformer", "DINOv2Sharding", "DINOv3Sharding",
              "CLIP", "CLIPTextModel", "CLIPVisionModel", "SigLIP", "SigLIPTextModel", "SigLIPVisionModel"]
# jimm's module paths -> names there (each the very object jimm_nnx exports).
JIMM_PATHS = {
    "common.sharding": ["NoSharding", "ShardingSpec", "sharding_of", "named_sharding_like", "replicated_sharding",
                        "reshard_like"],
    "common.tokamax_attention": ["make_tokamax_attention"],
    "common.autotuning": ["AutotuningResult", "autotune", "autotuned_fn", "cached_autotune", "load_autotune_result"],
    "models": ["VisionTransformer", "CLIP", "CLIPTextModel", "CLIPVisionModel", "SigLIP", "SigLIPTextModel",
               "SigLIPVisionModel"],
    "models.vit": ["VisionTransformer"], "models.vit.sharding": ["ViTSharding"],
    "models.clip": ["CLIP", "CLIPTextModel", "CLIPVisionModel"], "models.clip.sharding": ["CLIPSharding"],
    "models.siglip": ["SigLIP", "SigLIPTextModel", "SigLIPVisionModel"],
    "models.siglip.sharding": ["SigLIPSharding"],
    "models.dinov2": ["DINOv2Sharding"], "models.dinov2.sharding": ["DINOv2Sharding"],
    "models.dinov3": ["DINOv3Sharding"], "models.dinov3.sharding": ["DINOv3Sharding"],
}
MODEL_CLASSES = [jimm.VisionTransformer, jimm.CLIP, jimm.CLIPVisionModel, jimm.CLIPTextModel, jimm.SigLIP,
                 jimm.SigLIPVisionModel, jimm.SigLIPTextModel]


def test_names_and_module_paths_are_jimms():
    assert all(hasattr(jimm, name) for name in JIMM_NAMES)
    for path, names in JIMM_PATHS.items():
        module = importlib.import_module(f"jimm_nnx.{path}")
        for name in names:
            ours = getattr(jimm, name, None) or getattr(jimm.sharding, name)
            assert getattr(module, name) is ours, f"jimm_nnx.{path}.{name}"
    assert jimm.common.sharding.NoSharding is jimm.NoSharding


def test_each_model_group_is_its_own_module():
    """jimm_nnx.models splits like jimm: each group's classes in `models/<group>/model.py`, what
    they share in `models/base.py` and `models/image_text.py`; all importable from jimm_nnx.models."""
    groups = {"vit": ["VisionTransformer"], "clip": ["CLIP", "CLIPTextModel", "CLIPVisionModel"],
              "siglip": ["SigLIP", "SigLIPTextModel", "SigLIPVisionModel"], "dinov2": ["DINOv2Model"],
              "dinov3": ["DINOv3Model"]}
    for group, names in groups.items():
        package = importlib.import_module(f"jimm_nnx.models.{group}")
        for name in names:
            cls = getattr(jimm.models, name)
            assert cls.__module__ == f"jimm_nnx.models.{group}.model" and getattr(package, name) is cls, name
    assert jimm.models.PretrainedModel.__module__ == "jimm_nnx.models.base"
    assert jimm.models._ImageText.__module__ == jimm.models._Tower.__module__ == "jimm_nnx.models.image_text"


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_signatures_are_jimms(cls):
    def params(fn):
        return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]

    assert params(cls.from_pretrained)[:8] == ["model_name_or_path", "use_pytorch", "rngs", "dtype", "param_dtype",
                                               "sharding", "use_gradient_checkpointing", "attention_fn"]
    assert params(cls.from_config)[0] == "config"
    assert params(cls.save_pretrained)[0] == "save_directory"
    call = params(cls.__call__)
    if issubclass(cls, jimm.models._ImageText):
        assert call[:2] == ["image", "text"]
        assert params(cls.encode_image)[:2] == ["image", "do_projection"] and params(cls.encode_text)[0] == "text"
        assert {"vision_attention_fn", "text_attention_fn"} <= set(params(cls.from_config))
    elif issubclass(cls, jimm.models._Tower):
        assert call[1] == "do_projection"
    for name in ("sharding", "rngs"):
        assert inspect.signature(cls.from_pretrained).parameters[name].default is None  # per-class default, fresh rngs


def test_sharding_specs_are_jimms_and_cover_every_kernel():
    """jimm's FSDP classes split each large kernel on its contracting dim; on a model here,
    every kernel of each kind gets its field's spec (the scanned layer axis whole)."""
    assert jimm.ViTSharding().attn_out_kernel == (None, None, None)
    assert jimm.CLIPSharding().embed == ("fsdp", None) and jimm.ViTSharding().embed == (None, None)
    assert jimm.DINOv2Sharding().layer_scale == ("fsdp",) and isinstance(jimm.DINOv2Sharding(), jimm.ViTSharding)
    assert jimm.DINOv3Sharding().register_tokens == (None, None, None)
    config = parity.DEFAULTS["clip"]["clip-quick_gelu-eos5"]
    config = {**config, "model_type": "clip", "text_config": {**config["text_config"], "vocab_size": 100}}
    mesh = mesh_2x4(AxisType.Auto)
    with jax.set_mesh(mesh):
        model = jimm.CLIP.from_config(config)  # default: CLIPSharding
        block = model.img["Transformer"]["encoderblock"]  # width 48, MLP 64: "fsdp" (4) divides both
        want = [
            (block["MultiHeadDotProductAttention_0"]["query"]["kernel"], P(None, "fsdp", None, None)),
            (block["MultiHeadDotProductAttention_0"]["out"]["kernel"], P(None, None, None, None)),
            (block["MlpBlock_0"]["Dense_0"]["kernel"], P(None, "fsdp", None)),
            (block["MlpBlock_0"]["Dense_1"]["kernel"], P(None, "fsdp", None)),
            (block["MlpBlock_0"]["Dense_1"]["bias"], P(None, None)),
            (model.txt["Embed_0"]["embedding"], P("fsdp", None)),
            (model.img["pos_embedding"], P(None, None, "fsdp")),
            (model.img["embedding"]["kernel"], P(None, None, None, "fsdp")),
            (model.txt["head"]["kernel"], P("fsdp", None)),
            (model.txt["Encoder_0"]["encoder_norm"]["scale"], P(None)),
        ]
        for var, spec in want:
            assert var.get_value().sharding == NamedSharding(mesh, spec), (var.get_value().shape, spec)
            assert var.get_metadata()["out_sharding"] == tuple(spec)
        replicated = jimm.CLIP.from_config(config, sharding=jimm.NoSharding())
        assert all(x.sharding.is_fully_replicated and x.sharding.mesh == mesh
                   for x in jax.tree.leaves(bridge.to_linen_variables(replicated)))
    with pytest.raises(ValueError, match="one kind of parameter here"):
        dataclasses.replace(jimm.NoSharding(), attn_out_bias=("fsdp",)).layout()
    with pytest.raises(ValueError, match="2 dims expected"):
        dataclasses.replace(jimm.NoSharding(), mlp_up_kernel=("fsdp",)).layout()


# --- from_pretrained under jit ----------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    import transformers

    cfg = {k: v for k, v in VIT_HF.items() if k != "model_type"}
    transformers.ViTForImageClassification(transformers.ViTConfig(**cfg, num_labels=5)).save_pretrained(directory)
    return directory


def test_from_pretrained_inside_jit_as_jimms_tests_build_models(vit_dir):
    images = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3), np.float32))
    want = jimm.VisionTransformer.from_pretrained(vit_dir, sharding=jimm.NoSharding())(images)
    mesh = mesh_2x4(AxisType.Auto)

    @jax.jit
    def create_model():
        model = jimm.VisionTransformer.from_pretrained(vit_dir, rngs=nnx.Rngs(0))
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
        return model

    with jax.set_mesh(mesh):
        model = create_model()
        kernel = model.Transformer["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].get_value()
        assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "fsdp", None)), 3)
        assert_close(nnx.jit(lambda m, x: m(x))(model, images), want)
        assert_close(model(images), want)


# --- return values: CLIP / SigLIP and their towers ---------------------------------------------

@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_image_text_calls_return_what_jimm_returns(family, tmp_path):
    ref, pixels, ids = reference(family, tmp_path)
    cls, vision_cls, text_cls = {"clip": (jimm.CLIP, jimm.CLIPVisionModel, jimm.CLIPTextModel),
                                 "siglip": (jimm.SigLIP, jimm.SigLIPVisionModel, jimm.SigLIPTextModel)}[family]
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids))
        vision_pooled = ref.vision_model(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
        features = ref.get_image_features(pixel_values=torch.from_numpy(pixels))
    features = getattr(features, "pooler_output", features).numpy()
    images, text = jnp.asarray(nhwc(pixels)), jnp.asarray(ids, jnp.int32)
    model = cls.from_pretrained(tmp_path)
    logits = model(images, text)
    assert logits.shape == (3, 2)
    assert_close(logits, out.logits_per_image.numpy(), what="logits_per_image")
    assert_same_tree(logits, model.outputs(images, text).logits_per_image)
    assert_close(model.encode_image(images), features, what="image features")
    assert_close(model.encode_image(images, do_projection=False), vision_pooled, what="pooled image features")

    vision, text_tower = vision_cls.from_pretrained(tmp_path), text_cls.from_pretrained(tmp_path)
    assert_same_tree(vision(images), model.encode_image(images))
    assert_same_tree(vision(images, do_projection=False), model.encode_image(images, do_projection=False))
    assert_same_tree(text_tower(text), model.encode_text(text))
    pooled = text_tower(text, return_hidden_states=True).pooled
    assert_same_tree(text_tower(text, do_projection=False), pooled)
    with pytest.raises(TypeError, match="do_projection must be a bool"):
        text_tower(text, jnp.ones_like(text))

    # jimm's attribute names are views onto the same Variables, not copies.
    assert model.text_model.text_projection.kernel is model.txt["head"]["kernel"]
    assert model.vision_model.encoder.position_embeddings is model.img["pos_embedding"]
    assert text_tower.text_projection.kernel is text_tower.head["kernel"]
    assert vision.encoder.position_embeddings is vision.pos_embedding

    # A tower's from_config takes the full two-tower config, as jimm's does, and builds the
    # tower with its projection (CLIP) or head (SigLIP text).
    full = ref.config.to_dict()
    v, t = vision_cls.from_config(full), text_cls.from_config(full)
    proj = full.get("projection_dim", full["vision_config"]["hidden_size"])
    assert v(images).shape == (3, proj if family == "clip" else full["vision_config"]["hidden_size"])
    assert v(images, do_projection=False).shape == (3, full["vision_config"]["hidden_size"])
    assert t(text).shape[0] == 2 and t(text, do_projection=False).shape == (2, full["text_config"]["hidden_size"])


def test_per_tower_attention_functions(tmp_path):
    ref, pixels, ids = reference("clip", tmp_path)
    calls = []

    def counting(name):
        def attention(q, k, v, mask=None, *, is_causal=False):
            calls.append(name)
            return dot_product_attention(q, k, v, mask, is_causal=is_causal)
        return attention

    model = jimm.CLIP.from_config(ref.config.to_dict(), vision_attention_fn=counting("vision"),
                                  text_attention_fn=counting("text"))
    model(jnp.asarray(nhwc(pixels)), jnp.asarray(ids, jnp.int32))
    assert set(calls) == {"vision", "text"}


# --- the bugs jimm's suite found ----------------------------------------------------------------

def test_from_config_num_labels_decides_the_head():
    x = jnp.ones((2, 16, 16, 3))
    assert jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3})(x).shape == (2, 3)
    labels = {str(i): f"c{i}" for i in range(4)}
    assert jimm.VisionTransformer.from_config({**VIT_HF, "id2label": labels})(x).shape == (2, 4)
    no_head = jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3, "architectures": ["ViTModel"]})
    assert no_head(x).shape == (2, 32)


@pytest.mark.parametrize("path", ["./no-such-ckpt", "/no/such/ckpt", "no/such/ckpt", "~/no-such-ckpt",
                                  Path("no-such-ckpt"), "no-such-ckpt/"])
def test_a_missing_local_path_is_a_local_error(path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        jimm.VisionTransformer.from_pretrained(path)


def test_a_hub_id_still_goes_to_the_hub(monkeypatch):
    import huggingface_hub

    asked = []

    def snapshot_download(repo, **kwargs):
        asked.append(repo)
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        jimm.VisionTransformer.from_pretrained("some-org/some-model")
    assert asked == ["some-org/some-model"]


@pytest.mark.parametrize("kind", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_an_eager_batch_the_mesh_does_not_divide_runs(kind, tmp_path):
    """Batch 3 on a (2, 4) mesh: it runs whole on the axes that do not divide it."""
    ref, pixels, ids = reference("clip", tmp_path)
    images, text = jnp.asarray(nhwc(pixels)), jnp.asarray(ids, jnp.int32)
    want = jimm.CLIP.from_pretrained(tmp_path, sharding=jimm.NoSharding())(images, text)
    vit_want = jimm.VisionTransformer.from_config(VIT_HF | {"num_labels": 5})(images)
    with jax.set_mesh(mesh_2x4(kind)):
        assert_close(jimm.CLIP.from_pretrained(tmp_path)(images, text), want)
        assert_close(jimm.VisionTransformer.from_config(VIT_HF | {"num_labels": 5})(images), vit_want)


def test_a_safetensors_file_path_and_use_pytorch(vit_dir, tmp_path):
    import transformers

    images = jnp.ones((1, 16, 16, 3))
    from_dir = jimm.VisionTransformer.from_pretrained(vit_dir)(images)
    assert_same_tree(jimm.VisionTransformer.from_pretrained(vit_dir / "model.safetensors")(images), from_dir)
    # A checkpoint with both formats, holding different weights: use_pytorch picks the .bin.
    hf = transformers.ViTForImageClassification.from_pretrained(vit_dir)
    hf.save_pretrained(tmp_path)
    parity.perturb_(hf, 1)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with torch.no_grad():
        want_bin = hf(torch.from_numpy(np.ones((1, 3, 16, 16), np.float32))).logits.numpy()
    assert_same_tree(jimm.VisionTransformer.from_pretrained(tmp_path)(images), from_dir)
    assert_close(jimm.VisionTransformer.from_pretrained(tmp_path, use_pytorch=True)(images), want_bin)
    with pytest.raises(ValueError, match="is a file"):
        jimm.VisionTransformer.from_pretrained(vit_dir / "config.json")


def test_train_and_eval_modes():
    model = jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3, "hidden_dropout_prob": 0.5})
    x = jnp.ones((2, 16, 16, 3))
    evaluated = model(x)
    assert_same_tree(model(x), evaluated)  # eval mode after construction: no dropout
    model.train()
    assert not np.allclose(model(x), evaluated)
    model.eval()
    assert_same_tree(model(x), evaluated)
    assert not np.allclose(model(x, train=True), evaluated)


# --- tokamax --------------------------------------------------------------------------------------

def test_tokamax_attention_is_an_attention_fn():
    model = jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3})
    tokamax = jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3}, attention_fn=jimm.tokamax_attention)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32))
    assert_close(tokamax(x), model(x))


def test_autotuning_refuses_on_cpu_and_reads_saved_results(tmp_path):
    model = jimm.VisionTransformer.from_config({**VIT_HF, "num_labels": 3},
                                               attention_fn=jimm.make_tokamax_attention("xla"))
    forward = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((1, 16, 16, 3))
    for fn in (jimm.autotune, lambda *a: jimm.cached_autotune(*a, cache_dir=tmp_path),
               lambda *a: jimm.autotuned_fn(*a, cache_dir=tmp_path)):
        with pytest.raises(NotImplementedError, match="runs on CPU"):
            fn(forward, model, x)
    saved = tmp_path / "result.json"
    saved.write_text(jimm.AutotuningResult(device_kind="cpu", data=()).dumps())
    result = jimm.load_autotune_result(saved)
    assert isinstance(result, jimm.AutotuningResult) and result.device_kind == "cpu"
    with result:  # a context for calls with the tuned configs
        assert forward(model, x).shape == (1, 3)
