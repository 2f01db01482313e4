"""DINOv2 (with and without registers) and DINOv3 against HF Transformers' PyTorch models: every
tensor random, float32 on CPU, at the config's resolution and at another one, scan and loop,
masked patches; checkpoints both ways, configs, variants and bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jimm_linen
from jimm_linen import DINOv2, DINOv2Config, DINOv3, DINOv3Config
from jimm_linen.checkpoint import CheckpointError
from jimm_linen.layers import patch_rope, torch_bicubic_matrix
from jimm_linen.layers.rope import patch_centers
from jimm_nnx.reference import _quiet_transformers
from tests.helpers import assert_close, nhwc

# name -> (HF model class, HF config kwargs, another (height, width) to run at). Between them:
# GELU / SwiGLU / gated SiLU MLPs, with and without the mask token, registers (0, 3, 4), each
# attention bias off somewhere, layer norm eps, and resolutions that grow one side and shrink
# the other (bicubic with and without antialiasing for DINOv2; RoPE for DINOv3).
CONFIGS = {
    "dinov2": (transformers.Dinov2Model, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=28, patch_size=7,
        layerscale_value=0.5), (42, 14)),
    "dinov2-swiglu": (transformers.Dinov2Model, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=24, patch_size=8, qkv_bias=False,
        use_swiglu_ffn=True, use_mask_token=False, hidden_act="gelu_new", layer_norm_eps=1e-5), (16, 40)),
    "dinov2-registers": (transformers.Dinov2WithRegistersModel, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7,
        num_register_tokens=3), (14, 42)),
    "dinov3": (transformers.DINOv3ViTModel, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=8,
        num_register_tokens=4, layerscale_value=0.1), (48, 24)),
    "dinov3-gated": (transformers.DINOv3ViTModel, dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40, image_size=16, patch_size=4,
        use_gated_mlp=True, hidden_act="silu", mlp_bias=False, query_bias=False, key_bias=True, value_bias=False,
        proj_bias=False, rope_theta=1000.0, layer_norm_eps=1e-6), (12, 28)),
}


def randomize_(model, seed: int) -> None:
    """Every tensor random: HF initialises norms to (1, 0), biases, the mask token and DINOv2's
    registers to 0 and layer scale to a constant, any of which would hide a swapped or dropped
    tensor. Matrices keep HF's random init (realistic activation scales)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or (name.startswith("embeddings.") and "patch_embeddings" not in name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
            assert p.numel() <= 1 or p.std() > 0.01, name


def hf_outputs(model, pixels, bool_masked_pos=None):
    with torch.no_grad():
        out = model(torch.from_numpy(pixels), output_hidden_states=True,
                    bool_masked_pos=None if bool_masked_pos is None else torch.from_numpy(bool_masked_pos))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy(), [h.numpy() for h in out.hidden_states]


def assert_matches(ours, ref, what):
    last, pooled, hidden = ref
    assert_close(ours.last_hidden_state, last, what=f"{what} last_hidden_state")
    assert_close(ours.pooled, pooled, what=f"{what} pooler_output")
    np.testing.assert_array_equal(ours.output, ours.pooled)
    assert len(ours.hidden_states) == len(hidden)
    for i, (a, b) in enumerate(zip(ours.hidden_states, hidden)):
        assert_close(a, b, what=f"{what} hidden_states[{i}]")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """name -> (HF model, checkpoint directory): built once per config, on first use."""
    _quiet_transformers()
    cache = {}

    def get(name):
        if name not in cache:
            cls, kwargs, _ = CONFIGS[name]
            torch.manual_seed(len(cache))
            model = cls(cls.config_class(**kwargs)).eval()
            randomize_(model, len(cache) + 1)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            cache[name] = model, directory
        return cache[name]

    return get


def _apply(model, variables, images, **kwargs):
    return jax.jit(lambda v, x: model.apply(v, x, return_hidden_states=True, **kwargs))(variables, images)


def _masked(rng, config, batch):
    """A random `bool_masked_pos` (None where the config has no mask token)."""
    if not config.use_mask_token:
        return None
    masked = rng.rand(batch, config.grid_size ** 2) < 0.4
    masked[:, 0] = True
    return masked


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf(name, references):
    """At the config's resolution with some patches masked (where the config has a mask token),
    and at another resolution."""
    hf, directory = references(name)
    _, kwargs, other = CONFIGS[name]
    size = kwargs["image_size"]
    rng = np.random.RandomState(0)
    model, variables = jimm_linen.from_pretrained(directory)
    assert type(model) is (DINOv3 if name.startswith("dinov3") else DINOv2)
    pixels = rng.randn(2, 3, size, size).astype(np.float32)
    masked = _masked(rng, model.config, 2)
    assert_matches(_apply(model, variables, nhwc(pixels), bool_masked_pos=masked), hf_outputs(hf, pixels, masked),
                   f"{name} masked")
    pixels = rng.randn(2, 3, *other).astype(np.float32)
    assert_matches(_apply(model, variables, nhwc(pixels)), hf_outputs(hf, pixels), f"{name} at {other}")


@pytest.mark.parametrize("name", ["dinov2-registers", "dinov3"])
def test_loop_layout_matches_hf(name, references):
    hf, directory = references(name)
    model, variables = jimm_linen.from_pretrained(directory, scan=False)
    assert "encoderblock_1" in variables["params"]["Transformer"]
    pixels = np.random.RandomState(1).randn(2, 3, *CONFIGS[name][2]).astype(np.float32)
    assert_matches(_apply(model, variables, nhwc(pixels)), hf_outputs(hf, pixels), f"{name} loop")


@pytest.mark.parametrize("name", ["dinov2-swiglu", "dinov2-registers", "dinov3-gated"])
def test_save_round_trip(name, references, tmp_path):
    """HF -> jimm -> save_pretrained writes HF's own files back (same keys, same bits), and
    transformers loads them to the same outputs."""
    hf, directory = references(name)
    model, variables = jimm_linen.from_pretrained(directory)
    jimm_linen.save_pretrained(model, variables, tmp_path)
    theirs, ours = load_file(directory / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    reloaded = type(hf).from_pretrained(tmp_path).eval()
    pixels = np.random.RandomState(1).randn(2, 3, 24, 24).astype(np.float32)
    for a, b in zip(hf_outputs(reloaded, pixels)[2], hf_outputs(hf, pixels)[2]):
        np.testing.assert_array_equal(a, b)
    assert type(model.config).from_hf_config(json.loads((tmp_path / "config.json").read_text())) == model.config


def test_reads_transformers_5_in_memory_names(references, tmp_path):
    """A state dict taken from a live transformers 5 model (`q_proj`, `gate_proj`, `model.layer`)."""
    for name in ("dinov2-swiglu", "dinov3-gated"):
        hf, directory = references(name)
        out = tmp_path / name
        out.mkdir()
        save_file({k: v.numpy() for k, v in hf.state_dict().items()}, out / "model.safetensors")
        (out / "config.json").write_text((directory / "config.json").read_text())
        assert any(".q_proj." in k for k in hf.state_dict())
        _, a = jimm_linen.from_pretrained(directory)
        _, b = jimm_linen.from_pretrained(out)
        jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name", ["dinov2-registers", "dinov3"])
def test_missing_and_unexpected_keys_are_named(name, references, tmp_path):
    _, directory = references(name)
    state = load_file(directory / "model.safetensors")
    config = (directory / "config.json").read_text()
    dropped = "embeddings.register_tokens"
    for what, edit in (("missing", lambda s: s.pop(dropped)), ("unexpected", lambda s: s.update(extra=np.zeros(3)))):
        bad = dict(state)
        edit(bad)
        d = tmp_path / what
        d.mkdir(exist_ok=True)
        save_file(bad, d / "model.safetensors")
        (d / "config.json").write_text(config)
        with pytest.raises(CheckpointError, match=f"{what} keys: .*{dropped if what == 'missing' else 'extra'}"):
            jimm_linen.from_pretrained(d)


def test_no_registers_and_no_mask_token(references):
    """DINOv3 keeps a (1, 0, D) register tensor when it has none, as HF saves it; DINOv2 without
    `use_mask_token` has no mask token, and masking patches there is an error."""
    _, directory = references("dinov3-gated")
    _, variables = jimm_linen.from_pretrained(directory)
    assert variables["params"]["registers"].shape == (1, 0, 48)
    model, variables = jimm_linen.from_pretrained(references("dinov2-swiglu")[1])
    assert "mask_token" not in variables["params"] and "registers" not in variables["params"]
    with pytest.raises(ValueError, match="use_mask_token=False"):
        model.apply(variables, jnp.zeros((1, 24, 24, 3)), bool_masked_pos=jnp.zeros((1, 9), bool))


def test_bad_inputs_have_clear_errors(references):
    model, variables = jimm_linen.from_pretrained(references("dinov2")[1])
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model.apply(variables, jnp.zeros((1, 35, 35, 3)), interpolate_pos_encoding=False)
    with pytest.raises(ValueError, match="not divisible by the patch size 7"):
        model.apply(variables, jnp.zeros((1, 30, 30, 3)))
    with pytest.raises(ValueError, match=r"bool_masked_pos has shape \(1, 4\)"):
        model.apply(variables, jnp.zeros((1, 28, 28, 3)), bool_masked_pos=jnp.zeros((1, 4), bool))


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("n_in,n_out", [(4, 6), (7, 3), (5, 5), (2, 9), (9, 2), (37, 16)])
def test_bicubic_matrix_is_pytorch_interpolate(n_in, n_out, antialias):
    x = np.random.RandomState(0).randn(3, n_in)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, :, None, :].expand(1, 3, 2, n_in), size=(2, n_out), mode="bicubic",
        align_corners=False, antialias=antialias)[0, :, 0].numpy()
    np.testing.assert_allclose(x @ torch_bicubic_matrix(n_in, n_out, antialias).T, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid,head_dim,theta", [((4, 4), 16, 100.0), ((3, 7), 32, 1000.0), ((14, 14), 64, 100.0)])
def test_rope_tables_are_hf(grid, head_dim, theta):
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    hf = DINOv3ViTRopePositionEmbedding(transformers.DINOv3ViTConfig(
        hidden_size=head_dim, num_attention_heads=1, rope_theta=theta, patch_size=1)).eval()
    with torch.no_grad():
        cos, sin = hf(torch.zeros(1, 3, *grid))
    ours = patch_rope(patch_centers(*grid), head_dim, theta)
    for a, b in zip(ours, (cos, sin)):
        assert_close(a, b.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trips_through_hf(name):
    cls, kwargs, _ = CONFIGS[name]
    hf = cls.config_class(**kwargs).to_dict()
    ours = (DINOv3Config if name.startswith("dinov3") else DINOv2Config).from_hf_config(hf)
    assert type(ours).from_hf_config(ours.to_hf_config()) == ours
    back = cls.config_class(**ours.to_hf_config()).to_dict()
    # A bare HF config names no architecture; ours names the one model class it is.
    assert back.pop("architectures") == [cls.__name__] and hf.pop("architectures") is None
    assert {k: back[k] for k in hf if k != "transformers_version"} == \
        {k: v for k, v in hf.items() if k != "transformers_version"}


def test_config_errors_name_the_field():
    hf = transformers.Dinov2Config(hidden_size=32, num_attention_heads=4).to_dict()
    with pytest.raises(ValueError, match=r"unknown config field\(s\) for model_type 'dinov2': \['rope_theta'\]"):
        DINOv2Config.from_hf_config({**hf, "rope_theta": 100.0})
    with pytest.raises(ValueError, match="unsupported dinov2 architectures"):
        DINOv2Config.from_hf_config({**hf, "architectures": ["Dinov2ForImageClassification"]})
    with pytest.raises(ValueError, match="square"):
        DINOv2Config.from_hf_config({**hf, "image_size": [224, 112]})
    with pytest.raises(ValueError, match="reads model_type 'dinov3_vit'"):
        DINOv3Config.from_hf_config(hf)
    with pytest.raises(ValueError, match="no register tokens"):
        DINOv2Config(model_type="dinov2", num_register_tokens=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        DINOv3Config(hidden_size=36, num_attention_heads=6)
    v3 = transformers.DINOv3ViTConfig().to_dict()
    with pytest.raises(ValueError, match=r"\['qkv_bias'\]"):
        DINOv3Config.from_hf_config({**v3, "qkv_bias": True})


@pytest.mark.parametrize("variant,width,depth,heads,mlp,patch", [
    ("S/14", 384, 12, 6, 1536, 14), ("B/14", 768, 12, 12, 3072, 14), ("L/14", 1024, 24, 16, 4096, 14),
    ("g/14", 1536, 40, 24, 4096, 14),
])
def test_dinov2_variants(variant, width, depth, heads, mlp, patch):
    cfg = DINOv2Config.from_variant(variant, num_register_tokens=4)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.patch_size, cfg.image_size) == (width, depth, heads, mlp, patch, 518)
    assert cfg.model_type == "dinov2_with_registers"
    hf = transformers.Dinov2WithRegistersConfig(**cfg.to_hf_config())
    assert int(hf.hidden_size * hf.mlp_ratio) == (mlp * 3 // 2 if variant == "g/14" else mlp)


def test_dinov3_variants():
    cfg = DINOv3Config.from_variant("B/16", image_size=256)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.num_register_tokens, cfg.patch_size, cfg.image_size) == (768, 12, 12, 3072, 4, 16, 256)
    with pytest.raises(ValueError, match="unknown DINOv3 variant 'XL/16'"):
        DINOv3Config.from_variant("XL/16")


def test_training_randomness_only_in_training(references):
    """DINOv3's coordinate augmentation and stochastic depth draw from the "dropout" stream in
    training and are off otherwise."""
    model, variables = jimm_linen.from_pretrained(references("dinov3")[1])
    images = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
    drop_path = dataclasses.replace(model.config, pos_embed_rescale=None, drop_path_rate=0.5)
    outputs = []
    # Augmentation alone (HF's default rescale 2.0), then drop path alone.
    for m in (model, DINOv3(drop_path)):
        def run(v, x, m=m):
            train = [m.apply(v, x, train=True, rngs={"dropout": jax.random.key(k)}) for k in (1, 2)]
            return m.apply(v, x), *train

        evaluated, a, b = map(np.asarray, jax.jit(run)(variables, images))
        assert not np.allclose(a, b) and not np.allclose(a, evaluated)
        outputs.append(evaluated)
    np.testing.assert_array_equal(*outputs)


def test_nnx_classes_load_what_linen_loads(references):
    from flax import nnx

    from jimm_nnx import DINOv2Model, DINOv3Model, NoSharding

    for name, cls in (("dinov2-registers", DINOv2Model), ("dinov3", DINOv3Model)):
        directory = references(name)[1]
        model = cls.from_pretrained(directory, sharding=NoSharding())
        module, variables = jimm_linen.from_pretrained(directory)
        size = CONFIGS[name][1]["image_size"] + CONFIGS[name][1]["patch_size"]
        images = jnp.asarray(np.random.RandomState(2).randn(2, size, size, 3), jnp.float32)
        ours = nnx.jit(lambda m, x: m(x))(model, images)
        np.testing.assert_array_equal(ours, jax.jit(module.apply)(variables, images))
        assert ours.shape == (2, module.config.hidden_size)
    with pytest.raises(ValueError, match="holds a dinov3_vit checkpoint .* jimm_nnx.DINOv2Model does not load; use "
                                         "jimm_nnx.DINOv3Model$"):
        DINOv2Model.from_pretrained(directory, sharding=NoSharding())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dinov2", "dinov3"])
def test_real_width(name, tmp_path):
    """ViT-S widths (384, 6 heads, MLP 1536) at 224 px, two layers, every tensor random."""
    _quiet_transformers()
    if name == "dinov2":
        cls, cfg = transformers.Dinov2WithRegistersModel, DINOv2Config.from_variant(
            "S/14", num_hidden_layers=2, image_size=224, num_register_tokens=4)
    else:
        cls, cfg = transformers.DINOv3ViTModel, DINOv3Config.from_variant("S/16", num_hidden_layers=2)
    torch.manual_seed(0)
    hf = cls(cls.config_class(**cfg.to_hf_config())).eval()
    randomize_(hf, 1)
    hf.save_pretrained(tmp_path)
    model, variables = jimm_linen.from_pretrained(tmp_path)
    assert model.config == cfg
    pixels = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    assert_matches(_apply(model, variables, nhwc(pixels)), hf_outputs(hf, pixels), f"{name} S width")
