"""jimm CLIP / SigLIP vs HF Transformers' PyTorch CLIPModel / SiglipModel, float32 on CPU.

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on logits, embeddings, losses and every
hidden state of both towers, through Linen and NNX.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jimm_linen
import jimm_nnx
from jimm_nnx import reference as parity
from jimm_nnx import parity as nnx_parity
from tests.helpers import assert_close, assert_same_tree

CONFIGS = {**{n: ("clip", c) for n, c in parity.CLIP_CONFIGS.items()},
           **{n: ("siglip", c) for n, c in parity.SIGLIP_CONFIGS.items()}}
NNX_CLASSES = {"clip": jimm_nnx.CLIP, "siglip": jimm_nnx.SigLIP}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    family, cfg = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    model = parity.build_reference(family, cfg, directory, seed=7)
    return family, model, directory


def inputs(model, batch=3, seed=0, length=None):
    v, t = model.config.vision_config, model.config.text_config
    pixels = parity.random_images(batch, v.image_size, v.num_channels, seed)
    ids, mask = parity.random_text(batch, length or t.max_position_embeddings, t.vocab_size,
                                   t.eos_token_id, t.pad_token_id, seed)
    return pixels, ids, mask


def ours_inputs(pixels, ids, mask):
    return (jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids, jnp.int32),
            None if mask is None else jnp.asarray(mask, jnp.int32))


def assert_parity(out, ref, ref_named):
    ours, named = parity.image_text_named(out)
    assert_close(ours, ref, what="logits_per_image")
    assert_close(out.logits_per_text, ref.T, what="logits_per_text")
    assert set(named) == set(ref_named)
    for k in ref_named:
        assert_close(named[k], ref_named[k], what=k)


@pytest.mark.parametrize("masked", [True, False], ids=["padding-mask", "no-mask"])
@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_linen_matches_pytorch(reference, scan, masked):
    _, ref_model, directory = reference
    pixels, ids, mask = inputs(ref_model)
    mask = mask if masked else None
    ref, ref_named = parity.image_text_reference(ref_model, pixels, ids, mask)
    model, variables = jimm_linen.from_pretrained(directory, scan=scan)
    out = model.apply(variables, *ours_inputs(pixels, ids, mask), return_hidden_states=True)
    assert_parity(out, ref, ref_named)


def test_nnx_matches_pytorch_and_linen(reference):
    family, ref_model, directory = reference
    pixels, ids, mask = inputs(ref_model, seed=1)
    ref, ref_named = parity.image_text_reference(ref_model, pixels, ids, mask)
    nnx_model = NNX_CLASSES[family].from_pretrained(directory, sharding=jimm_nnx.NoSharding())
    out = nnx_model.outputs(*ours_inputs(pixels, ids, mask), return_hidden_states=True)
    assert_parity(out, ref, ref_named)
    module, variables = jimm_linen.from_pretrained(directory)
    # The eager NNX call runs the Linen apply compiled: bit for bit `jax.jit(apply)`'s outputs.
    linen = jax.jit(lambda v, *x: module.apply(v, *x, return_hidden_states=True))(
        variables, *ours_inputs(pixels, ids, mask))
    np.testing.assert_array_equal(np.asarray(out.logits_per_image), np.asarray(linen.logits_per_image))


def test_shorter_text_and_features_match_pytorch(reference):
    """Text shorter than max_position_embeddings, and encode_image / encode_text against HF's
    get_image_features / get_text_features (unnormalised, projected)."""
    _, ref_model, directory = reference
    pixels, ids, mask = inputs(ref_model, batch=2, seed=2,
                               length=ref_model.config.text_config.max_position_embeddings - 3)
    model, variables = jimm_linen.from_pretrained(directory)
    images, ids_j, mask_j = ours_inputs(pixels, ids, mask)
    with torch.no_grad():
        img_ref = ref_model.get_image_features(pixel_values=torch.from_numpy(pixels))
        txt_ref = ref_model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    img_ref = getattr(img_ref, "pooler_output", img_ref).numpy()
    txt_ref = getattr(txt_ref, "pooler_output", txt_ref).numpy()
    assert_close(model.apply(variables, images, method="encode_image"), img_ref, what="image features")
    assert_close(model.apply(variables, ids_j, mask_j, method="encode_text"), txt_ref, what="text features")
    ref, ref_named = parity.image_text_reference(ref_model, pixels, ids, mask)
    assert_parity(model.apply(variables, images, ids_j, mask_j, return_hidden_states=True), ref, ref_named)


def test_loss_matches_pytorch(reference):
    _, ref_model, directory = reference
    pixels, ids, mask = inputs(ref_model, batch=4, seed=3)
    with torch.no_grad():
        ref = ref_model(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                        attention_mask=torch.from_numpy(mask), return_loss=True)
    model, variables = jimm_linen.from_pretrained(directory)
    out = model.apply(variables, *ours_inputs(pixels, ids, mask), return_loss=True)
    assert_close(out.loss, ref.loss.numpy(), what="loss")
    loss_fn = jimm_linen.contrastive_loss if isinstance(model, jimm_linen.CLIP) else jimm_linen.sigmoid_loss
    assert_close(loss_fn(jnp.asarray(ref.logits_per_text.numpy())), ref.loss.numpy(), what="loss function")


def test_interpolated_position_embeddings_match_pytorch(reference):
    _, ref_model, directory = reference
    v = ref_model.config.vision_config
    size = v.image_size + 2 * v.patch_size
    pixels, ids, mask = inputs(ref_model, batch=2, seed=4)
    pixels = parity.random_images(2, size, v.num_channels, seed=4)
    ref, ref_named = parity.image_text_reference(ref_model, pixels, ids, mask, interpolate_pos_encoding=True)
    model, variables = jimm_linen.from_pretrained(directory)
    out = model.apply(variables, *ours_inputs(pixels, ids, mask), interpolate_pos_encoding=True,
                      return_hidden_states=True)
    assert_parity(out, ref, ref_named)


# --- round trips ------------------------------------------------------------------------------

def test_hf_to_jimm_to_hf_is_exact(reference, tmp_path):
    family, ref_model, directory = reference
    model, variables = jimm_linen.from_pretrained(directory)
    jimm_linen.save_pretrained(model, variables, tmp_path)
    hf_cls = type(ref_model)
    reloaded = hf_cls.from_pretrained(tmp_path).eval()
    want, got = ref_model.state_dict(), reloaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((directory / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        for k, v in saved[tower].items():
            assert original[tower].get(k, v) == v, (tower, k)
    # Our config, read back from what we wrote, is the config we had.
    assert jimm_linen.from_pretrained(tmp_path)[0].config == model.config


def test_linen_nnx_linen_and_scan_loop_round_trips(reference):
    family, ref_model, directory = reference
    scanned, variables = jimm_linen.from_pretrained(directory, scan=True)
    looped, loop_vars = jimm_linen.from_pretrained(directory, scan=False)
    assert_same_tree(jimm_linen.layers.scan_to_loop(variables["params"]), loop_vars["params"])
    assert_same_tree(jimm_linen.layers.loop_to_scan(loop_vars["params"]), variables["params"])
    nnx_model = NNX_CLASSES[family].from_pretrained(directory, sharding=jimm_nnx.NoSharding())
    import bridge

    assert_same_tree(bridge.to_linen_variables(nnx_model)["params"], variables["params"])
    pixels, ids, mask = inputs(ref_model, batch=2, seed=5)
    a = scanned.apply(variables, *ours_inputs(pixels, ids, mask)).logits_per_image
    b = looped.apply(loop_vars, *ours_inputs(pixels, ids, mask)).logits_per_image
    # Exact parameters; the outputs of the two layouts differ only by XLA's float32 rounding.
    assert_close(a, b, what="scan vs loop logits")


def test_config_round_trips_through_transformers(reference):
    family, ref_model, _ = reference
    ours_cls = {"clip": jimm_linen.CLIPConfig, "siglip": jimm_linen.SigLIPConfig}[family]
    ours = ours_cls.from_hf_config(ref_model.config.to_dict())
    hf_cls = type(ref_model.config)
    again = hf_cls(**ours.to_hf_config())
    assert ours_cls.from_hf_config(again.to_dict()) == ours
    for tower in ("text_config", "vision_config"):
        want, got = getattr(ref_model.config, tower).to_dict(), getattr(again, tower).to_dict()
        for k in ours.to_hf_config()[tower]:
            assert got[k] == want[k], (tower, k)


# --- full size --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family,name", [("clip", "clip-vit-b32"), ("siglip", "siglip-base16")])
def test_full_size_matches_pytorch(family, name, tmp_path):
    parity.build_reference(family, parity.FULL[family][name], tmp_path, seed=0)
    results = parity.check_directory(name, tmp_path, nnx_parity.RUNNERS, batch=2)
    for r in results:
        assert r.ok, r
        assert r.argmax_agree == 1.0, r
