"""jimm ViT vs HF Transformers' PyTorch ViTForImageClassification, float32 on CPU.

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|), on logits and on every hidden state.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jimm_linen
from jimm_nnx import reference as parity
from tests.helpers import assert_close, bound

BF16_BOUND = 2e-2  # as in tests/test_linen_vit.py and the README


def assert_parity(out, ref_logits, ref_hidden):
    assert_close(out.output, ref_logits, what="logits")
    assert len(out.hidden_states) == len(ref_hidden)
    for i, (a, b) in enumerate(zip(out.hidden_states, ref_hidden)):
        assert_close(a, b, what=f"hidden state {i}")


@pytest.fixture(scope="module", params=sorted(parity.VIT_CONFIGS))
def reference(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = parity.build_vit_reference(parity.VIT_CONFIGS[request.param], directory, seed=3)
    return model, directory


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_linen_matches_pytorch(reference, scan):
    ref_model, directory = reference
    cfg = ref_model.config
    pixels = parity.random_images(3, cfg.image_size, cfg.num_channels, seed=1)
    ref_logits, ref_hidden = parity.reference_outputs(ref_model, pixels)
    model, variables = jimm_linen.from_pretrained(directory, scan=scan)
    out = model.apply(variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)), return_hidden_states=True)
    assert_parity(out, ref_logits, ref_hidden)
    np.testing.assert_array_equal(np.argmax(out.output, -1), ref_logits.argmax(-1))


@pytest.mark.parametrize("size", [(24, 24), (40, 24), (8, 8)], ids=["up", "non-square", "down"])
def test_interpolated_position_embeddings_match_pytorch(reference, size):
    ref_model, directory = reference
    cfg = ref_model.config
    h, w = (s * cfg.patch_size // 4 for s in size)
    pixels = parity.random_images(2, (h, w), cfg.num_channels, seed=2)
    ref_logits, ref_hidden = parity.reference_outputs(ref_model, pixels, interpolate_pos_encoding=True)
    model, variables = jimm_linen.from_pretrained(directory)
    out = model.apply(variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)), return_hidden_states=True,
                      interpolate_pos_encoding=True)
    assert_parity(out, ref_logits, ref_hidden)


def test_nnx_matches_pytorch(reference):
    import jimm_nnx

    ref_model, directory = reference
    cfg = ref_model.config
    pixels = parity.random_images(2, cfg.image_size, cfg.num_channels, seed=4)
    ref_logits, ref_hidden = parity.reference_outputs(ref_model, pixels)
    model = jimm_nnx.VisionTransformer.from_pretrained(directory, sharding=jimm_nnx.NoSharding())
    images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    assert_close(model(images), ref_logits, what="nnx logits")
    assert_parity(model(images, return_hidden_states=True), ref_logits, ref_hidden)


@pytest.mark.slow
def test_vit_b16_matches_pytorch(tmp_path):
    ref_model = parity.build_vit_reference(parity.VIT_B16, tmp_path, seed=0)
    pixels = parity.random_images(2, 224, 3, seed=0)
    ref_logits, ref_hidden = parity.reference_outputs(ref_model, pixels)
    model, variables = jimm_linen.from_pretrained(tmp_path)
    out = model.apply(variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)), return_hidden_states=True)
    assert_parity(out, ref_logits, ref_hidden)
    # bf16 compute against the float32 reference, within the documented bf16 bound.
    bf16, _ = jimm_linen.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    logits = bf16.apply(variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    assert logits.dtype == jnp.bfloat16
    assert np.abs(np.asarray(logits, np.float32) - ref_logits).max() <= bound(ref_logits, BF16_BOUND)
    # Also at 384px through interpolate_pos_encoding, as fine-tuned checkpoints are used.
    pixels = parity.random_images(1, 384, 3, seed=1)
    ref_logits, ref_hidden = parity.reference_outputs(ref_model, pixels, interpolate_pos_encoding=True)
    out = model.apply(variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)), return_hidden_states=True,
                      interpolate_pos_encoding=True)
    assert_parity(out, ref_logits, ref_hidden)
