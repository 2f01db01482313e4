"""The decoder house: one registry every consumer derives from, configs read as HF reads them,
the per-layer auxiliary channel, and the attention slot's scale / soft-cap / window."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jimm_linen
import jimm_nnx
from jimm_linen import registry, training
from jimm_linen.layers.attention_fns import dot_product_attention, make_tokamax_attention
from jimm_linen.models.llama.model import LlamaBlock
from jimm_linen.pretrained import FAMILIES
from jimm_nnx import cli
from jimm_nnx import parity as nnx_parity
from jimm_nnx import reference
from tests.helpers import assert_close


# --- the registry ---------------------------------------------------------------------------

def test_every_consumer_knows_the_registrys_families():
    families, decoders = registry.families(), registry.decoders()
    assert set(FAMILIES) == set(families) and {"llama", "qwen3", "olmo2"} <= set(decoders)
    assert set(decoders) <= set(nnx_parity.CLASSES) <= set(families)  # CLIP / SigLIP towers: by their pair
    assert set(jimm_nnx.causal_lm.FAMILY_CLASSES) == set(decoders)
    assert set(decoders) <= set(reference.DEFAULTS) and set(decoders) <= set(reference.FULL)
    with contextlib.redirect_stdout(io.StringIO()) as help_text:
        assert cli.main(["parity", "--help"]) == 0
    flat_help = " ".join(help_text.getvalue().split())
    for model_type, fam in decoders.items():
        assert getattr(jimm_linen, fam.module_cls.__name__) is fam.module_cls
        assert getattr(jimm_linen, fam.config_cls.__name__) is fam.config_cls
        nnx_cls = getattr(jimm_nnx, fam.nnx_name)
        assert nnx_cls is jimm_nnx.causal_lm.FAMILY_CLASSES[model_type] is nnx_parity.CLASSES[model_type]
        assert nnx_cls.linen_cls is fam.module_cls and issubclass(nnx_cls, jimm_nnx.CausalLM)
        assert jimm_nnx.CausalLM._module_cls(fam.config_cls()) is fam.module_cls
        assert reference.DEFAULTS[model_type] == fam.parity and fam.parity
        assert reference.FULL[model_type] == fam.parity_full
        assert model_type in flat_help and fam.config_cls.model_type == model_type


# --- configs as HF reads them ------------------------------------------------------------------

# HuggingFaceTB/SmolLM2-135M's published config.json: `is_llama_config` and `rope_interleaved`
# are fields LlamaConfig does not define (they were refused before).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
    "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
    "vocab_size": 49152,
}


def test_smollm2_config_loads_keeps_its_fields_and_matches_hf(tmp_path):
    config = jimm_linen.LlamaConfig.from_hf_config(SMOLLM2_135M)
    assert (config.hidden_size, config.num_key_value_heads, config.rope.rope_theta) == (576, 3, 100000.0)
    back = config.to_hf_config()
    for field in ("is_llama_config", "rope_interleaved", "use_cache", "pretraining_tp", "torch_dtype",
                  "transformers_version"):
        assert back[field] == SMOLLM2_135M[field], field
    assert jimm_linen.LlamaConfig.from_hf_config(back) == config
    # Its real fields at 2 of its 30 layers, through HF's own model.
    kwargs = {k: v for k, v in SMOLLM2_135M.items() if k not in ("architectures", "model_type")}
    hf = reference.build_decoder_reference("llama", dict(kwargs, num_hidden_layers=2), tmp_path, seed=3)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["is_llama_config"] is True and saved["rope_interleaved"] is False
    ids, mask = reference.left_padded_ids(2, 12, 49152, seed=1)
    ref_logits, _ = reference.decoder_reference_outputs(hf, ids, mask)
    module, variables = jimm_linen.from_pretrained(tmp_path)
    logits = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
    real = lambda x: reference.real_positions(x, mask)  # noqa: E731
    assert_close(real(logits), real(ref_logits), what="SmolLM2 logits")
    assert module.config.to_hf_config()["is_llama_config"] is True


def test_a_field_hf_defines_but_we_do_not_implement_is_named():
    @dataclasses.dataclass(frozen=True)
    class NoMlpBias(jimm_linen.LlamaConfig):
        hf_unread = ("mlp_bias",)  # as if our block had no MLP bias: HF's default is all we implement

    assert dict(NoMlpBias.from_hf_config(dict(SMOLLM2_135M, mlp_bias=False)).kept)["mlp_bias"] == "false"
    with pytest.raises(ValueError, match=r"mlp_bias=True .* only HF's defaults \(mlp_bias=False\)"):
        NoMlpBias.from_hf_config(dict(SMOLLM2_135M, mlp_bias=True))
    with pytest.raises(ValueError, match=r"pretraining_tp=2"):
        jimm_linen.LlamaConfig.from_hf_config(dict(SMOLLM2_135M, pretraining_tp=2))


def test_rope_scaling_wins_over_rope_parameters_as_in_transformers():
    import transformers

    both = dict(SMOLLM2_135M, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                rope_scaling={"rope_type": "linear", "factor": 2.0})
    ours = jimm_linen.LlamaConfig.from_hf_config(both).rope
    hf = transformers.LlamaConfig.from_dict({k: v for k, v in both.items() if k != "model_type"}).rope_parameters
    assert (ours.rope_type, ours.rope_theta, dict(ours.params)) == (hf["rope_type"], hf["rope_theta"],
                                                                    {"factor": hf["factor"]})
    assert (ours.rope_type, ours.rope_theta) == ("linear", 100000.0)


# --- the auxiliary channel ---------------------------------------------------------------------

class AuxBlock(LlamaBlock):
    """Llama's block that also hands out a per-layer auxiliary output (as an MoE router would)."""

    @nn.compact
    def __call__(self, x, shared, own):
        x, out = super().__call__(x, shared, own)
        return x, out.replace(aux={"router_logits": x.mean(-1)})


class AuxLlama(jimm_linen.Llama):
    block = AuxBlock

    def aux_loss(self, aux, attention_mask):
        return 0.01 * jnp.mean(aux["router_logits"] ** 2)


@pytest.mark.parametrize("scan", [True, False])
def test_per_layer_auxiliary_outputs_reach_the_output_and_the_loss(scan):
    config = jimm_linen.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2)
    module = AuxLlama(config, scan=scan)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)
    variables = module.init(jax.random.key(0), ids)
    out = module.apply(variables, ids, return_hidden_states=True)
    assert out.aux["router_logits"].shape == (3, 2, 7)  # [layers, batch, length]
    for i in range(2):  # layer i's output, averaged over the embedding (HF's last hidden state is normed)
        np.testing.assert_allclose(out.aux["router_logits"][i], out.hidden_states[i + 1].mean(-1), rtol=1e-6)
    loss, metrics = training.loss_and_metrics(module, variables, ids)
    np.testing.assert_allclose(metrics["aux_loss"], 0.01 * jnp.mean(out.aux["router_logits"] ** 2), rtol=1e-6)
    np.testing.assert_allclose(loss, metrics["cross_entropy"] + metrics["aux_loss"], rtol=1e-6)
    plain, plain_metrics = training.loss_and_metrics(jimm_linen.Llama(config, scan=scan), variables, ids)
    assert "aux_loss" not in plain_metrics and float(plain) == float(metrics["cross_entropy"])
    with pytest.raises(ValueError, match=r"output_router_logits=True: AuxLlama has no router"):
        module.apply(variables, ids, output_router_logits=True)


# --- the attention slot ------------------------------------------------------------------------

def _qkv(t=7, s=7):
    r = np.random.default_rng(0)
    return (jnp.asarray(r.standard_normal((2, t, 4, 8)), jnp.float32),
            jnp.asarray(r.standard_normal((2, s, 2, 8)), jnp.float32),
            jnp.asarray(r.standard_normal((2, s, 2, 8)), jnp.float32))


def test_scale_soft_cap_and_window_as_written_out():
    q, k, v = _qkv()
    out = dot_product_attention(q, k, v, is_causal=True, scale=0.3, logits_soft_cap=2.0, local_window_size=(2, 0))
    kr = jnp.repeat(k, 2, axis=2)
    vr = jnp.repeat(v, 2, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, kr) * 0.3
    logits = 2.0 * jnp.tanh(logits / 2.0)
    i, j = np.arange(7)[:, None], np.arange(7)[None, :]
    logits = jnp.where((j <= i) & (j >= i - 2), logits, -jnp.inf)  # itself and the 2 before: a window of 3
    want = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), vr)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_tokamax_takes_the_same_options_and_the_fallback_list_moves_on():
    q, k, v = _qkv()
    options = dict(is_causal=True, scale=0.3, logits_soft_cap=2.0, local_window_size=(2, 0))
    attention = make_tokamax_attention(["mosaic", "xla"])  # mosaic refuses on CPU
    np.testing.assert_allclose(attention(q, k, v, **options), dot_product_attention(q, k, v, **options),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"mosaic: meant for"):
        make_tokamax_attention(["mosaic"])(q, k, v, **options)
