"""CLIP / SigLIP beyond parity: bad input, strict checkpoints, configs, and an FSDP AdamW step
on 8 fake CPU devices."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file, save_file

import jimm_linen
import jimm_nnx
from jimm_nnx import reference as parity
from jimm_linen import partitioning as pt
from jimm_linen.checkpoint import CheckpointError

SIGLIP = jimm_linen.SigLIPConfig.from_variants("mu/4", image_size=16, vocab_size=64, max_position_embeddings=8)
CLIP = jimm_linen.CLIPConfig.from_variants("mu/4", "mu", image_size=16, vocab_size=64, max_position_embeddings=8,
                                           projection_dim=24, eos_token_id=3)


def init(config, cls):
    model = cls(config)
    images = jnp.zeros((2, 16, 16, 3))
    ids = jnp.full((2, 8), 5, jnp.int32)
    return model, model.init(jax.random.key(0), images, ids), images, ids


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    parity.build_reference("clip", parity.CLIP_CONFIGS["clip-quick_gelu-eos5"], directory, seed=1)
    return directory


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,config", [(jimm_linen.CLIP, CLIP), (jimm_linen.SigLIP, SIGLIP)], ids=["clip", "siglip"])
def test_bad_text_is_refused(cls, config):
    model, variables, images, ids = init(config, cls)
    with pytest.raises(ValueError, match="longer than max_position_embeddings 8"):
        model.apply(variables, images, jnp.ones((2, 9), jnp.int32))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model.apply(variables, images, ids.at[0, 1].set(64))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model.apply(variables, images, ids.at[1, 0].set(-1))
    with pytest.raises(ValueError, match="integer token ids"):
        model.apply(variables, images, ids.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model.apply(variables, images, ids[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.apply(variables, images, ids, jnp.ones((2, 7), jnp.int32))
    with pytest.raises(ValueError, match="NCHW"):
        model.apply(variables, images.transpose(0, 3, 1, 2), ids)


def test_mismatched_batches_are_refused_for_the_loss_only():
    model, variables, images, ids = init(SIGLIP, jimm_linen.SigLIP)
    out = model.apply(variables, images, ids[:1])  # 2 images x 1 text: logits, as in HF
    assert out.logits_per_image.shape == (2, 1) and out.logits_per_text.shape == (1, 2)
    with pytest.raises(ValueError, match="got 2 images and 1 texts"):
        model.apply(variables, images, ids[:1], return_loss=True)
    for loss in (jimm_linen.contrastive_loss, jimm_linen.sigmoid_loss):
        with pytest.raises(ValueError, match="must be square"):
            loss(jnp.zeros((2, 3)))


def test_out_of_range_ids_under_jit_give_nan_not_a_wrong_row():
    """Under jit the ids are not concrete, so no error can be raised: the embedding lookup
    fills with NaN instead of clamping to a valid row."""
    model, variables, images, ids = init(SIGLIP, jimm_linen.SigLIP)
    out = jax.jit(model.apply)(variables, images, ids.at[0, 3].set(1000))
    assert np.isnan(np.asarray(out.text_embeds[0])).all()
    assert np.isfinite(np.asarray(out.text_embeds[1])).all()


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="must be equal"):
        jimm_linen.SigLIPConfig(text=dataclasses.replace(SIGLIP.text, projection_size=16), vision=SIGLIP.vision)
    hf = SIGLIP.to_hf_config()
    with pytest.raises(ValueError, match="vision_use_head=False"):
        jimm_linen.SigLIPConfig.from_hf_config({**hf, "vision_config": {**hf["vision_config"], "vision_use_head": False}})
    with pytest.raises(ValueError, match=r"unknown config field\(s\) for model_type 'siglip_text_model': \['rope_theta'\]"):
        jimm_linen.SigLIPConfig.from_hf_config({**hf, "text_config": {**hf["text_config"], "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="unknown config field"):
        jimm_linen.CLIPConfig.from_hf_config({**CLIP.to_hf_config(), "use_rope": True})
    with pytest.raises(ValueError, match="expected model_type 'clip'"):
        jimm_linen.CLIPConfig.from_hf_config(hf)
    with pytest.raises(ValueError, match="unknown text variant"):
        jimm_linen.TextConfig.from_variant("XXL")


def test_variant_configs_are_the_published_sizes():
    clip = jimm_linen.CLIPConfig.from_variants("B/32", "M")
    assert clip == jimm_linen.CLIPConfig.from_hf_config(__import__("transformers").CLIPConfig().to_dict())
    siglip = jimm_linen.SigLIPConfig.from_variants("B/16")
    hf = __import__("transformers").SiglipConfig().to_dict()
    ours = jimm_linen.SigLIPConfig.from_hf_config(hf)
    # SiglipConfig's defaults keep CLIP's token ids (see parity.SIGLIP_B16); everything else matches.
    assert dataclasses.replace(ours, text=dataclasses.replace(ours.text, pad_token_id=1, bos_token_id=49406,
                                                              eos_token_id=49407)) == siglip


# --- strict checkpoints -----------------------------------------------------------------------

def _edit_checkpoint(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})


def test_checkpoint_keys_are_strict(clip_dir, tmp_path):
    _edit_checkpoint(clip_dir, tmp_path / "missing", lambda s: s.pop("text_projection.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: \['text_projection.weight \(-> txt/head/kernel\)'\]"):
        jimm_linen.from_pretrained(tmp_path / "missing")
    _edit_checkpoint(clip_dir, tmp_path / "extra", lambda s: s.update(logit_bias=np.zeros((1,), np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['logit_bias'\]"):
        jimm_linen.from_pretrained(tmp_path / "extra")
    _edit_checkpoint(clip_dir, tmp_path / "shape", lambda s: s.update(logit_scale=np.zeros((2,), np.float32)))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: \['logit_scale: checkpoint \(2,\), model expects \(\)"):
        jimm_linen.from_pretrained(tmp_path / "shape")


def test_position_id_buffers_of_older_checkpoints_are_ignored(clip_dir, tmp_path):
    def add_buffers(state):
        state["text_model.embeddings.position_ids"] = np.arange(12)[None]
        state["vision_model.embeddings.position_ids"] = np.arange(17)[None]

    _edit_checkpoint(clip_dir, tmp_path / "old", add_buffers)
    _, with_buffers = jimm_linen.from_pretrained(tmp_path / "old")
    _, without = jimm_linen.from_pretrained(clip_dir)
    jax.tree.map(np.testing.assert_array_equal, with_buffers, without)


def test_siglip_in_proj_round_trips_through_the_fused_key(tmp_path):
    parity.build_reference("siglip", parity.SIGLIP_CONFIGS["siglip-tanh-16px"], tmp_path / "ref", seed=3)
    model, variables = jimm_linen.from_pretrained(tmp_path / "ref")
    attn = variables["params"]["img"]["MAPHead_0"]["MultiHeadDotProductAttention_0"]
    in_proj = load_file(tmp_path / "ref" / "model.safetensors")["vision_model.head.attention.in_proj_weight"]
    d = in_proj.shape[1]
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(np.asarray(attn[name]["kernel"]).reshape(d, d), in_proj[i * d:(i + 1) * d].T)
    jimm_linen.save_pretrained(model, variables, tmp_path / "out")
    again = load_file(tmp_path / "out" / "model.safetensors")["vision_model.head.attention.in_proj_weight"]
    np.testing.assert_array_equal(again, in_proj)


# --- training on 8 fake devices ---------------------------------------------------------------

def test_fsdp_adamw_step_decreases_the_sigmoid_loss():
    config = jimm_linen.SigLIPConfig.from_variants("mu/4", image_size=16, vocab_size=64, max_position_embeddings=8)
    model = jimm_linen.SigLIP(config)
    mesh = jax.make_mesh((8,), ("fsdp",))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((8, 16, 16, 3), dtype=np.float32))
    ids = jnp.asarray(rng.integers(0, 64, (8, 8)), jnp.int32)
    p_sh = pt.param_shardings(model, images, ids, mesh=mesh, rules="fsdp")
    tx = optax.adamw(3e-3, weight_decay=1e-4)
    o_sh = pt.optimizer_shardings(tx, model, images, ids, mesh=mesh, rules="fsdp")
    x_sh, t_sh = pt.data_sharding(images.shape, mesh, "fsdp"), pt.data_sharding(ids.shape, mesh, "fsdp")
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(p_sh)), "nothing is sharded"

    def loss_fn(p, x, t):
        return model.apply({"params": p}, x, t, return_loss=True).loss

    def step(p, o, x, t):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, t)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    with pt.activation_sharding(mesh, "fsdp"):
        params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), images, ids))["params"],
                         out_shardings=p_sh)()
        opt = jax.jit(tx.init, out_shardings=o_sh)(params)
        train_step = jax.jit(step, in_shardings=(p_sh, o_sh, x_sh, t_sh), out_shardings=(p_sh, o_sh, None),
                             donate_argnums=(0, 1))
        x, t = jax.device_put(images, x_sh), jax.device_put(ids, t_sh)
        losses = []
        for _ in range(5):
            params, opt, loss = train_step(params, opt, x, t)
            losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    kernel = params["txt"]["Encoder_0"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec), kernel.sharding


def test_nnx_clip_trains_and_saves(clip_dir, tmp_path):
    from flax import nnx

    model = jimm_nnx.CLIP.from_pretrained(clip_dir, sharding=jimm_nnx.NoSharding())
    cfg = model.config
    images = jnp.asarray(parity.random_images(4, 16, 3, seed=1).transpose(0, 2, 3, 1))
    ids, mask = parity.random_text(4, 12, cfg.text.vocab_size, cfg.text.eos_token_id, cfg.text.pad_token_id, seed=1)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: m.outputs(images, ids, mask, return_loss=True).loss)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(3)]
    assert losses[2] < losses[0], losses
    model.save_pretrained(tmp_path)
    module, variables = jimm_linen.from_pretrained(tmp_path)
    # An eager NNX call runs the compiled Linen apply, so it matches `jax.jit(apply)` bit for bit.
    np.testing.assert_array_equal(np.asarray(jax.jit(module.apply)(variables, images, ids, mask).logits_per_image),
                                  np.asarray(model(images, ids, attention_mask=mask)))
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["CLIPModel"]


# --- single towers ----------------------------------------------------------------------------

TOWERS = {"clip": (jimm_nnx.CLIPVisionModel, jimm_nnx.CLIPTextModel, "CLIPVisionModelWithProjection",
                   "CLIPTextModelWithProjection"),
          "siglip": (jimm_nnx.SigLIPVisionModel, jimm_nnx.SigLIPTextModel, "SiglipVisionModel", "SiglipTextModel")}


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_towers_from_full_checkpoints_and_in_hf_tower_format(family, tmp_path):
    import torch
    import transformers

    name, cfg = next(iter(parity.DEFAULTS[family].items()))
    ref = parity.build_reference(family, cfg, tmp_path / "full", seed=4)
    t = ref.config.text_config
    pixels = parity.random_images(2, ref.config.vision_config.image_size, 3, seed=4)
    ids, mask = parity.random_text(2, t.max_position_embeddings, t.vocab_size, t.eos_token_id, t.pad_token_id, seed=4)
    images, ids_j, mask_j = jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    with torch.no_grad():
        want_img = ref.get_image_features(pixel_values=torch.from_numpy(pixels))
        want_txt = ref.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    want_img = getattr(want_img, "pooler_output", want_img).numpy()
    want_txt = getattr(want_txt, "pooler_output", want_txt).numpy()

    vision_cls, text_cls, hf_vision, hf_text = TOWERS[family]
    vision = vision_cls.from_pretrained(tmp_path / "full", sharding=jimm_nnx.NoSharding())
    text = text_cls.from_pretrained(tmp_path / "full", sharding=jimm_nnx.NoSharding())
    from tests.helpers import assert_close

    assert_close(vision(images), want_img, what="image features")
    assert_close(text(ids_j, attention_mask=mask_j), want_txt, what="text features")

    # Saved in HF's single-tower format, which transformers loads and reproduces; read back by
    # the jimm_nnx class and by jimm_linen.from_pretrained alike.
    for model, arch, run, want in ((vision, hf_vision, lambda m: m(images), want_img),
                                   (text, hf_text, lambda m: m(ids_j, attention_mask=mask_j), want_txt)):
        out = tmp_path / arch
        model.save_pretrained(out)
        assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
        hf = getattr(transformers, arch).from_pretrained(out).eval()
        with torch.no_grad():
            o = hf(pixel_values=torch.from_numpy(pixels)) if model is vision else \
                hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        got = getattr(o, "image_embeds", None) if model is vision else getattr(o, "text_embeds", None)
        assert_close(got if got is not None else o.pooler_output, want, what=f"HF {arch}")
        again = type(model).from_pretrained(out, sharding=jimm_nnx.NoSharding())
        np.testing.assert_array_equal(np.asarray(run(again)), np.asarray(run(model)))
        module, variables = jimm_linen.from_pretrained(out)
        inputs = (images,) if model is vision else (ids_j, mask_j)
        np.testing.assert_array_equal(np.asarray(jax.jit(module.apply)(variables, *inputs)), np.asarray(run(model)))
    other = jimm_nnx.SigLIPVisionModel if family == "clip" else jimm_nnx.CLIPVisionModel
    with pytest.raises(ValueError, match="checkpoint"):
        other.from_pretrained(tmp_path / "full")


def test_clip_vision_model_without_projection_reads_hf_clipvisionmodel(tmp_path):
    import torch
    import transformers

    cfg = parity.CLIP_CONFIGS["clip-quick_gelu-eos5"]["vision_config"]
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**cfg)).eval()
    parity.perturb_(hf, 1)
    hf.save_pretrained(tmp_path)
    pixels = parity.random_images(2, 16, 3, seed=0)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
    model = jimm_nnx.CLIPVisionModel.from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    assert model.config.num_labels == 0
    from tests.helpers import assert_close

    assert_close(model(jnp.asarray(pixels.transpose(0, 2, 3, 1))), want, what="pooled CLS")


@pytest.mark.parametrize("impl", ["xla", "xla_chunked"])
def test_tokamax_attention_with_causal_and_padding_masks(impl):
    """CLIP's text tower passes both masks to the attention_fn; tokamax's backends honour them."""
    from tests.helpers import assert_close

    model, variables, images, _ = init(CLIP, jimm_linen.CLIP)
    ids, mask = parity.random_text(2, 8, 64, 3, 1, seed=0)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    want = model.apply(variables, images, ids, mask, return_hidden_states=True)
    got = model.clone(attention_fn=jimm_linen.make_tokamax_attention(impl)).apply(
        variables, images, ids, mask, return_hidden_states=True)
    assert_close(got.logits_per_image, want.logits_per_image, what="logits")
    for i, (a, b) in enumerate(zip(got.text_output.hidden_states, want.text_output.hidden_states)):
        assert_close(a, b, what=f"text hidden state {i}")
