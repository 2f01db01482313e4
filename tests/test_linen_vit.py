"""The Linen ViT on its own: layouts, remat, dtypes, dropout, configs and bad input."""

import contextlib
import dataclasses
import io
import re

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jimm_linen
from jimm_linen import ViT, ViTConfig
from jax.ad_checkpoint import print_saved_residuals

from jimm_linen.layers import loop_to_scan, remat_policy, scan_to_loop, torch_bicubic_matrix
from jimm_linen.layers.stack import PROJECTION_NAMES
from jimm_linen.models.base import Model, Tower
from jimm_linen.models.image_text.model import TextTransformer
from tests.helpers import TINY, assert_close, max_rel_diff

CFG = ViTConfig(**TINY, layer_norm_eps=1e-6)
IMAGES = jnp.asarray(np.random.RandomState(0).randn(2, 16, 16, 3), jnp.float32)
LABELS = jnp.array([1, 3])


@pytest.fixture(scope="module")
def scanned():
    model = ViT(CFG, scan=True)
    variables = nn.unbox(model.init(jax.random.key(0), IMAGES))
    return model, variables


def _loss(model, variables):
    def loss(params):
        logits = model.apply({"params": params}, IMAGES)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), LABELS])

    return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_scan_and_loop_give_same_outputs_and_gradients(scanned):
    model, variables = scanned
    variables = {"params": jax.tree.map(np.asarray, variables["params"])}
    loop_params = scan_to_loop(variables["params"], CFG.num_hidden_layers)
    assert "encoderblock_1" in loop_params["Transformer"] and "encoderblock" not in loop_params["Transformer"]
    loop = ViT(CFG, scan=False)
    # The converted tree is exactly the tree a loop model creates.
    assert jax.tree.structure(loop_params) == jax.tree.structure(nn.unbox(loop.init(jax.random.key(0), IMAGES))["params"])
    (l1, g1), (l2, g2) = _loss(model, variables), _loss(loop, {"params": loop_params})
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    # Same math, fused differently by XLA: the gradients agree within 1e-6 x max(1, max |g|)
    # (the HF parity bound's form, ten times tighter), not elementwise, since an entry near
    # cancellation carries the float32 rounding of its larger neighbours.
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-6, what="scan vs loop gradient"),
                 g1, loop_to_scan(jax.tree.map(np.asarray, g2)))
    back = loop_to_scan(loop_params)
    jax.tree.map(np.testing.assert_array_equal, back, variables["params"])


def test_layout_conversion_refuses_boxed_trees():
    boxed = ViT(CFG).init(jax.random.key(0), IMAGES)["params"]
    with pytest.raises(TypeError, match="unbox first"):
        scan_to_loop(boxed)


@pytest.fixture(scope="module")
def baselines(scanned):
    model, variables = scanned
    loop_params = scan_to_loop(variables["params"])
    return {True: (variables["params"], _loss(model, variables)),
            False: (loop_params, _loss(ViT(CFG, scan=False), {"params": loop_params}))}


@pytest.mark.parametrize("scan,policy", [
    (True, "minimal"), (True, "full"), (True, "dots_saveable"), (True, "save:query_proj,mlp_in"),
    (False, "minimal"), (False, "full"),
])
def test_remat_keeps_outputs_and_gradients(baselines, policy, scan):
    params, base = baselines[scan]
    remat = _loss(ViT(CFG, scan=scan, remat_policy=policy), {"params": params})
    np.testing.assert_allclose(base[0], remat[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), base[1], remat[1])


def _saved_names(policy: str, params) -> tuple[list[str], int]:
    """The `checkpoint_name` tags among the residuals the backward pass keeps, and their count."""
    model = ViT(CFG, remat_policy=policy, scan=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(lambda p: model.apply({"params": p}, IMAGES).sum(), params)
    lines = [line for line in buf.getvalue().splitlines() if "from the argument" not in line]
    return sorted({m for line in lines for m in re.findall(r"named '(\w+)'", line)}), len(lines)


def test_remat_policies_keep_what_they_say(baselines):
    params = baselines[False][0]
    names = {p: _saved_names(p, params) for p in ("none", "minimal", "save:query_proj,mlp_in", "full")}
    # mlp_out only feeds a residual add, so the backward pass never needs it.
    assert names["minimal"][0] == sorted(set(PROJECTION_NAMES) - {"mlp_out"})
    assert names["save:query_proj,mlp_in"][0] == ["mlp_in", "query_proj"]
    assert names["full"][0] == []
    counts = [names[p][1] for p in ("none", "minimal", "save:query_proj,mlp_in", "full")]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4, counts


def test_unknown_remat_policy():
    with pytest.raises(ValueError, match="unknown remat policy 'sometimes'"):
        remat_policy("sometimes")
    with pytest.raises(ValueError, match="unknown tensor names"):
        remat_policy("save:not_a_tag")


# bf16 compute: the documented bound on logits is 2e-2 relative to max |logit| (bf16 keeps 8
# mantissa bits, eps 7.8e-3), checked on ViT-B/16 in tests/parity (measured 9e-3). This
# 2-layer model measures 7e-4, so it is held to half a bf16 epsilon.
BF16_BOUND = 4e-3


def test_bfloat16_stays_close_to_float32(scanned):
    model, variables = scanned
    ref = model.apply(variables, IMAGES)
    out = ViT(CFG, dtype=jnp.bfloat16).apply(variables, IMAGES)
    assert out.dtype == jnp.bfloat16
    assert max_rel_diff(out.astype(jnp.float32), ref) <= BF16_BOUND
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    out = ViT(CFG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16).apply(bf16_params, IMAGES)
    assert max_rel_diff(out.astype(jnp.float32), ref) <= BF16_BOUND


def test_dropout_only_in_training(scanned):
    model, variables = scanned
    cfg = dataclasses.replace(CFG, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    dropped = ViT(cfg)
    np.testing.assert_array_equal(dropped.apply(variables, IMAGES), model.apply(variables, IMAGES))
    a = dropped.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(1)})
    b = dropped.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    with pytest.raises(Exception, match="dropout"):
        dropped.apply(variables, IMAGES, train=True)
    # Attention-probability dropout alone changes the output too.
    attn_only = ViT(dataclasses.replace(CFG, attention_probs_dropout_prob=0.3))
    a = attn_only.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, model.apply(variables, IMAGES))


@pytest.mark.parametrize("pooling", ["map", "mean"])
def test_other_poolings_run(pooling):
    cfg = dataclasses.replace(CFG, pooling=pooling)
    model = ViT(cfg)
    variables = model.init(jax.random.key(0), IMAGES)
    assert model.apply(variables, IMAGES).shape == (2, 5)
    params = variables["params"]
    assert ("cls" in params) is False and params["pos_embedding"].value.shape == (1, 16, 32)
    assert ("MAPHead_0" in params) == (pooling == "map")
    out = model.apply(variables, IMAGES, return_hidden_states=True)
    if pooling == "mean":
        np.testing.assert_allclose(out.pooled, out.last_hidden_state.mean(axis=1), rtol=1e-6)


def test_bad_inputs_have_clear_errors(scanned):
    model, variables = scanned
    cases = [
        (IMAGES.transpose(0, 3, 1, 2), "looks like NCHW"),
        (IMAGES[..., :2], "expected 3 channels"),
        (IMAGES[:, :15, :15], "not divisible by the patch size 4"),
        (IMAGES[0], "expected images of shape"),
        (IMAGES.astype(jnp.int32), "expected float images"),
        (jnp.zeros((2, 24, 24, 3)), "interpolate_pos_encoding=True"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            model.apply(variables, images)


def test_config_round_trips_through_hf():
    from transformers import ViTConfig as HFViTConfig

    cfg = ViTConfig(**TINY, hidden_act="gelu_new", qkv_bias=False, id2label=tuple("abcde"))
    hf = cfg.to_hf_config()
    assert ViTConfig.from_hf_config(hf) == cfg
    assert ViTConfig.from_hf_config(HFViTConfig(**hf).to_dict()) == cfg
    with pytest.raises(ValueError, match="only class-token pooling"):
        dataclasses.replace(cfg, pooling="map").to_hf_config()


def test_config_validation():
    with pytest.raises(ValueError, match="unsupported hidden_act 'gelu_fancy'"):
        ViTConfig(hidden_act="gelu_fancy")
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        ViTConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown pooling"):
        ViTConfig(pooling="max")


@pytest.mark.parametrize("variant,width,depth,heads,patch", [
    ("Ti/16", 192, 12, 3, 16), ("S/16", 384, 12, 6, 16), ("B/16", 768, 12, 12, 16),
    ("L/16", 1024, 24, 16, 16), ("H/14", 1280, 32, 16, 14), ("So400m/14", 1152, 27, 16, 14),
])
def test_variants(variant, width, depth, heads, patch):
    cfg = ViTConfig.from_variant(variant, image_size=224, num_labels=10)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (width, depth, heads, patch)
    assert cfg.intermediate_size == {"So400m/14": 4304}.get(variant, 4 * width)
    assert cfg.num_labels == 10


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown ViT variant 'XL/16'"):
        ViTConfig.from_variant("XL/16")


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (7, 3), (5, 5), (2, 9)])
def test_bicubic_matrix_is_pytorch_interpolate(n_in, n_out):
    x = np.random.RandomState(0).randn(n_in).astype(np.float64)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None, None, :].expand(1, 1, 2, n_in), size=(2, n_out),
        mode="bicubic", align_corners=False)[0, 0, 0].numpy()
    np.testing.assert_allclose(torch_bicubic_matrix(n_in, n_out) @ x, expected, rtol=1e-12, atol=1e-12)



def test_only_the_towers_carry_tower_output():
    """`tower_output` (the head on pooled features, `TowerOutput`) belongs to the vision models'
    towers, not to the base every model shares: decoders do not carry it."""
    for cls in (ViT, jimm_linen.DINOv2, jimm_linen.DINOv3, TextTransformer):
        assert issubclass(cls, Tower) and hasattr(cls, "tower_output"), cls
    assert not hasattr(Model, "tower_output") and not hasattr(jimm_linen.CausalLM, "tower_output")
