"""jimm's Gemma and Gemma 2 vs HF Transformers' PyTorch `GemmaForCausalLM` / `Gemma2ForCausalLM`
(and the legacy HF Flax `FlaxGemmaForCausalLM`), float32 on CPU, beyond what the generic decoder
tests run on every registry config (`test_decoders.py`: logits and hidden states through Linen
and NNX; `test_decoder_checkpoints.py`: round trips): configs read as HF reads the published
ones; the bfloat16 embedding scale as HF rounds it; Gemma 2's soft-caps and windows where they
change the output, through the KV cache (prefill, then one token at a time) past the window, in
greedy generation with an EOS that stops one row early, in the chunked training loss, and
through tokamax; one real-width config per family (`slow`).

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on the logits and on every hidden state,
at the real (unpadded) positions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jimm_linen
import jimm_nnx
from jimm_linen import training
from jimm_linen.layers.attention_fns import make_tokamax_attention
from jimm_linen.registry import decoders
from jimm_nnx import reference as parity
from tests import legacy_flax
from tests import lm_checkpoints as lmc
from tests.helpers import (DecoderSetup, assert_cache_matches_hf, assert_close, assert_decoder_matches, bound,
                           cached_calls)

GEMMA, GEMMA2 = decoders()["gemma"], decoders()["gemma2"]
CONFIG = GEMMA2.parity["gemma2-gqa-headdim-softcaps-untied-window5"]
W, VOCAB, PAD = CONFIG["sliding_window"], CONFIG["vocab_size"], 0
# The whole sequence: PROMPT columns are prefilled, the rest fed one token at a time. Row r has
# PADS[r] columns of left padding; every row's prompt is longer than the window.
B, PROMPT, TOTAL = 3, 12, 20
PADS = (0, 3, 6)
NEW = 12  # generated tokens, past the window again


def left_padded(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(seed).randint(3, VOCAB, size=(B, length)).astype(np.int64)
    mask = (np.arange(length)[None] >= np.asarray(PADS)[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, PAD), mask


def real(x, mask):
    return parity.real_positions(x, mask)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory) -> DecoderSetup:
    s = DecoderSetup.build("gemma2", CONFIG, tmp_path_factory.mktemp("gemma2"), seed=21)
    assert s.hf.config.layer_types == list(s.module.config.layer_kinds()) == [
        "sliding_attention", "full_attention", "sliding_attention"]
    assert left_padded(PROMPT, 0)[1].sum(1).min() > W
    return s


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> DecoderSetup:
    return DecoderSetup.build("gemma", GEMMA.parity["gemma-gqa-headdim-bias-untied-linear"],
                              tmp_path_factory.mktemp("gemma"), seed=22)


# --- configs ------------------------------------------------------------------------------------

# The fields of the published config.json files of google/gemma-2b (Gemma 1's `hidden_act: "gelu"`,
# one key/value head) and google/gemma-2-9b (no `layer_types`; `hidden_act` beside
# `hidden_activation`, and `cache_implementation`, `sliding_window_size`, which HF's Gemma 2 never reads).
GEMMA_2B = {
    "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2,
    "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 16384, "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 8,
    "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0",
    "use_cache": True, "vocab_size": 256000}
GEMMA_2_9B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 16,
    "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "sliding_window_size": 4096,
    "torch_dtype": "float32", "transformers_version": "4.42.0.dev0", "use_cache": True, "vocab_size": 256000}


@pytest.mark.parametrize("published", [GEMMA_2B, GEMMA_2_9B], ids=["gemma-2b", "gemma-2-9b"])
def test_published_configs_read_as_hf_reads_them(published):
    family = decoders()[published["model_type"]]
    ours = family.config_cls.from_hf_config(published)
    hf = transformers.CONFIG_MAPPING[published["model_type"]].from_dict(
        {k: v for k, v in published.items() if k != "model_type"})
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
                  "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
        assert getattr(ours, field) == getattr(hf, field), field
    assert (ours.rope.rope_type, ours.rope.rope_theta) == (hf.rope_parameters["rope_type"],
                                                           hf.rope_parameters["rope_theta"])
    if family is GEMMA:
        assert ours.hidden_act == hf.hidden_act == "gelu_pytorch_tanh"
        assert ours.layer_kinds() == ("full_attention",) * 18
    else:
        assert ours.layer_kinds() == tuple(hf.layer_types) and ours.layer_types is None
        assert ours.window("sliding_attention") == hf.sliding_window == 4096
        for field in ("hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping",
                      "final_logit_softcapping"):
            assert getattr(ours, field) == getattr(hf, field), field
        assert {k for k, _ in ours.kept} >= {"hidden_act", "cache_implementation", "sliding_window_size"}
    back = ours.to_hf_config()
    assert family.config_cls.from_hf_config(back) == ours
    rewritten = {"rope_theta", "rope_scaling", *({"hidden_act"} if family is GEMMA else ())}  # as HF writes them
    assert {k: back[k] for k in published if k not in rewritten} == {
        k: v for k, v in published.items() if k not in rewritten}
    assert transformers.CONFIG_MAPPING[published["model_type"]].from_dict(back).to_dict() == hf.to_dict()


def test_each_family_reads_its_own_activation_field():
    """Gemma's MLP reads `hidden_act` (Gemma 1's `"gelu"` meaning the tanh GELU), Gemma 2's
    `hidden_activation` as written: `"gelu"` there is the exact GELU."""
    gemma = GEMMA.config_cls.from_hf_config(dict(GEMMA_2B, hidden_activation="silu"))
    assert gemma.hidden_act == "gelu_pytorch_tanh" and dict(gemma.kept)["hidden_activation"] == '"silu"'
    gemma2 = GEMMA2.config_cls.from_hf_config(dict(GEMMA_2_9B, hidden_activation="gelu", hidden_act="silu"))
    hf = transformers.Gemma2Config.from_dict(dict(GEMMA_2_9B, hidden_activation="gelu", hidden_act="silu"))
    assert gemma2.hidden_activation == hf.hidden_activation == "gelu"
    assert dict(gemma2.kept)["hidden_act"] == '"silu"'


@pytest.mark.parametrize("family, edit, message", [
    pytest.param("gemma", dict(use_bidirectional_attention=True), r"use_bidirectional_attention=True",
                 id="gemma-bidirectional"),
    pytest.param("gemma2", dict(use_bidirectional_attention=True), r"use_bidirectional_attention=True",
                 id="gemma2-bidirectional"),
    pytest.param("gemma2", dict(sliding_window=None),
                 r"layer_types has sliding_attention layers but sliding_window is not set", id="no-window"),
    pytest.param("gemma2", dict(layer_types=["full_attention", "sliding_attention"]), r"for each of the 3 layers",
                 id="layer-types-short"),
    pytest.param("gemma2", dict(hidden_activation="gelu_exotic"), r"unsupported hidden_activation 'gelu_exotic'",
                 id="unknown-activation"),
    pytest.param("gemma", dict(num_key_value_heads=3), r"num_key_value_heads 3 does not divide", id="kv-heads"),
])
def test_unsupported_configs_are_named(family, edit, message, gemma, gemma2, tmp_path):
    source = {"gemma": gemma, "gemma2": gemma2}[family].directory
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    hf = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**hf, **edit}))
    with pytest.raises(ValueError, match=message):
        jimm_linen.from_pretrained(bad)
    with pytest.raises(ValueError, match=message):
        jimm_nnx.CausalLM.from_pretrained(bad, sharding=jimm_nnx.NoSharding())


def test_the_bidirectional_switch_off_is_kept():
    for off in (False, None):
        config = GEMMA.config_cls.from_hf_config(dict(GEMMA_2B, use_bidirectional_attention=off))
        assert config.to_hf_config()["use_bidirectional_attention"] is off


def test_each_nnx_class_takes_its_own_family(gemma, gemma2):
    assert type(jimm_nnx.CausalLM.from_pretrained(gemma2.directory, sharding=jimm_nnx.NoSharding()).linen_module) \
        is jimm_linen.Gemma2
    assert type(gemma2.lm) is jimm_nnx.Gemma2 and type(gemma.lm) is jimm_nnx.Gemma
    # Gemma 2's classes subclass Gemma's: Gemma's NNX class still refuses its checkpoints.
    with pytest.raises(ValueError, match=r"holds a gemma2 checkpoint \(Gemma2Config\), which jimm_nnx.Gemma does not "
                                         r"load; use jimm_nnx.CausalLM or jimm_nnx.Gemma2$"):
        jimm_nnx.Gemma.from_pretrained(gemma2.directory, sharding=jimm_nnx.NoSharding())
    with pytest.raises(ValueError, match=r"model_type 'gemma2' is not a Gemma family"):
        jimm_nnx.Gemma.from_config(gemma2.hf.config.to_dict())


# --- the embedding scale ------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [2048, 2304, 3072, 3584, 4608])
def test_embedding_scale_rounds_in_bfloat16_as_hf(hidden):
    """HF multiplies the bf16 rows by `sqrt(hidden)` cast to bf16 (a float32 tensor `.to(bf16)`):
    bit for bit the same products, which the float32 scale with the product rounded after would
    not give (at each width here but 2304, whose 48 both hold exactly)."""
    from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

    table = torch.randn(32, hidden, generator=torch.Generator().manual_seed(hidden)).to(torch.bfloat16)
    ids = np.arange(32)[None]
    ref = GemmaTextScaledWordEmbedding(32, hidden, padding_idx=0, embed_scale=hidden ** 0.5).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(table)
        expected = ref(torch.from_numpy(ids)).float().numpy()
    config = GEMMA.config_cls(vocab_size=32, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                              num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    module = jimm_linen.Gemma(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = {"params": {"token_embedder": {"embedding": jnp.asarray(table.float().numpy(), jnp.bfloat16)}}}
    ours = module.apply(variables, jnp.asarray(ids), None, method="embed")
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours, np.float32), expected)
    unrounded = (jnp.asarray(table.float().numpy()) * np.float32(hidden ** 0.5)).astype(jnp.bfloat16)
    if float(jnp.bfloat16(hidden ** 0.5)) != float(np.float32(hidden ** 0.5)):
        assert not np.array_equal(np.asarray(unrounded, np.float32), expected)


# --- Gemma 2: soft-caps and windows ---------------------------------------------------------------

def test_soft_caps_and_the_window_change_the_output(gemma2):
    """Each soft-cap and the window, dropped over the same weights, moves the logits far beyond
    the tolerance; with all of them the logits are HF's."""
    ids, mask = left_padded(PROMPT + 4, seed=1)
    ref_logits, _ = parity.decoder_reference_outputs(gemma2.hf, ids, mask)
    assert_close(real(gemma2.forward(ids, mask), mask), real(ref_logits, mask), what="logits")
    tol = bound(real(ref_logits, mask))
    for change in (dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None),
                   dict(layer_types=("full_attention",) * 3)):
        moved = np.abs(real(gemma2.forward(ids, mask, **change), mask) - real(ref_logits, mask)).max()
        assert moved > 1e3 * tol, f"{change}: {moved}"


@pytest.mark.parametrize("face", ["linen", "nnx"])
def test_kv_cache_prefill_then_decode_matches_hf_full_forward(gemma2, face):
    """The prefill equals HF's forward on the prompt (every prompt longer than the window); each
    decoded token's logits and hidden states equal HF's full forward over the sequence so far at
    its last column, past the window, with a cache longer than the sequence."""
    ids, mask = left_padded(TOTAL, seed=2)
    call, init_cache = cached_calls(gemma2.module, gemma2.variables, gemma2.lm)[face]
    assert_cache_matches_hf(gemma2.hf, call, init_cache(B, TOTAL + 3), ids, mask, PROMPT, face)


def lone_eos(free: np.ndarray, row: int) -> tuple[int, int]:
    """A token that row `row` of a greedy continuation produces, for the first time, before its
    last two steps and that no other row produces, and that step: as EOS, it stops that row early
    and only that row."""
    others = np.delete(free, row, axis=0)
    for step in range(free.shape[1] - 2):
        token = int(free[row, step])
        if token not in free[row, :step] and token not in others:
            return token, step
    raise AssertionError(f"no early EOS of row {row} alone in {free}")


def hf_generate(hf, ids, mask, eos) -> np.ndarray:
    with torch.no_grad():
        return hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                           do_sample=False, eos_token_id=eos, pad_token_id=PAD).numpy()


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
def test_greedy_generation_with_an_early_eos_equals_hf_generate(family, gemma, gemma2):
    """A left-padded batch (prompts past Gemma 2's window), greedy: row 1 stops at an EOS that
    it alone produces, early; the others run to the end. Linen and NNX, token for token."""
    s = {"gemma": gemma, "gemma2": gemma2}[family]
    ids, mask = left_padded(PROMPT + 4, seed=3)
    unused = s.hf.config.vocab_size - 1
    free = hf_generate(s.hf, ids, mask, eos=unused)[:, ids.shape[1]:]
    assert (free != unused).all() and len(set(free[0].tolist())) > 3, f"a degenerate continuation: {free}"
    eos, step = lone_eos(free, row=1)
    ref = hf_generate(s.hf, ids, mask, eos=eos)
    new = ref[:, ids.shape[1]:]
    assert ref.shape == (B, ids.shape[1] + NEW) and (new[1, step + 1:] == PAD).all()
    np.testing.assert_array_equal(np.delete(new, 1, axis=0), np.delete(free, 1, axis=0))
    out = jimm_linen.generate(s.module, s.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    nnx_out = s.lm.generate(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens=NEW, eos_token_id=eos,
                            pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(nnx_out.sequences), ref)


def test_chunked_training_loss_soft_caps_as_hf_labels_loss(gemma2):
    """The chunked next-token loss runs the logits hook, final soft-cap included: HF's `labels=`
    loss on a left-padded batch (HF's positions; -100 where a token or its predecessor is
    padding), 3 chunks of 5 positions."""
    ids, mask = left_padded(PROMPT + 4, seed=4)
    ref = lmc.hf_forward(gemma2.hf, ids, mask)
    loss, count = jax.jit(lambda v: training.next_token_loss(gemma2.module, v, jnp.asarray(ids, jnp.int32),
                                                             jnp.asarray(mask), chunk_size=5))(gemma2.variables)
    assert int(count) == int(lmc.hand_weights(mask > 0).sum())
    assert_close(loss, ref.loss.item(), what="loss vs HF labels=")
    uncapped = dataclasses.replace(gemma2.module.config, final_logit_softcapping=None)
    plain, _ = training.next_token_loss(gemma2.module.clone(config=uncapped), gemma2.variables,
                                        jnp.asarray(ids, jnp.int32), jnp.asarray(mask), chunk_size=5)
    assert abs(float(plain) - ref.loss.item()) > 1e3 * bound(ref.loss.item())


def test_tokamax_runs_the_soft_cap_and_window(gemma2):
    """Through tokamax with a fallback list: cuDNN refuses (on a GPU because it cannot soft-cap,
    here because this is a CPU) and the list moves on to `xla_chunked`, which gives HF's logits."""
    ids, mask = left_padded(PROMPT + 4, seed=5)
    ref_logits, _ = parity.decoder_reference_outputs(gemma2.hf, ids, mask)
    module = gemma2.module.clone(attention_fn=make_tokamax_attention(["cudnn", "xla_chunked"]))
    logits = jax.jit(module.apply)(gemma2.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_close(real(logits, mask), real(ref_logits, mask), what="tokamax logits")


# --- real widths --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family, name", [("gemma", "gemma-2b-2layers"), ("gemma2", "gemma-2-2b-width-2layers")])
def test_real_width_matches_pytorch(family, name, tmp_path):
    """Gemma-2B's width (8 heads of 256 over 2048, one key/value head) and Gemma-2-2B's (8 heads
    of 256 over 2304, 4 key/value heads, its soft-caps), one layer each (a 4096 window is no
    window for these prompts), through Linen and NNX; a 4096-token vocabulary (the real one's
    256k rows only make the embedding longer, and the test slower)."""
    config = dict(decoders()[family].parity_full[name], vocab_size=4096, num_hidden_layers=1)
    hf = parity.build_decoder_reference(family, config, tmp_path, seed=0)
    ids, mask = parity.left_padded_ids(2, parity.DECODER_LENGTH, 4096, seed=0)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(hf, ids, mask)
    module, variables = jimm_linen.from_pretrained(tmp_path)
    out = jax.jit(lambda v, i, m: module.apply(v, i, m, return_hidden_states=True))(
        variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "linen")
    lm = getattr(jimm_nnx, decoders()[family].nnx_name).from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    out = lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "nnx")


# --- the legacy HF Flax Gemma (transformers 4.57.6) ---------------------------------------------

# What FlaxGemmaForCausalLM computes right: rope theta 10000 (it hard-codes it); it has GQA, an
# explicit head_dim, attention biases and the tied head.
LEGACY_GEMMA = dict(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                    num_key_value_heads=2, head_dim=12, attention_bias=True, rms_norm_eps=2e-5,
                    max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=10000.0))


@pytest.mark.legacy_flax
def test_gemma_matches_legacy_flax(tmp_path):
    hf = parity.build_decoder_reference("gemma", LEGACY_GEMMA, tmp_path / "checkpoint", seed=7)
    ids, mask = parity.left_padded_ids(3, parity.DECODER_LENGTH, LEGACY_GEMMA["vocab_size"], seed=7)
    legacy = legacy_flax.run_decoder(tmp_path / "checkpoint", "FlaxGemmaForCausalLM", ids, mask, tmp_path)
    # The legacy model is a second reference, not HF's current one under another name.
    ref_logits, _ = parity.decoder_reference_outputs(hf, ids, mask)
    assert_close(real(legacy["logits"], mask), real(ref_logits, mask), what="legacy flax vs PyTorch")

    module, variables = jimm_linen.from_pretrained(tmp_path / "checkpoint")
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda v, i, m: module.apply(v, i, m, return_hidden_states=True))(
            variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_decoder_matches(out.logits, out.hidden_states, legacy["logits"], legacy["hidden_states"], mask, "legacy flax")
