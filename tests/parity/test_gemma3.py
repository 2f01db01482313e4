"""jimm's Gemma 3 (text) vs HF Transformers' PyTorch `Gemma3ForCausalLM`, float32 on CPU, beyond
what the generic decoder tests run on every registry config: both registry configs through Linen
and NNX (q/k norms, a RoPE per layer kind, non-periodic `layer_types`, windows shorter than the
prompts); the KV cache (prefill, then one token at a time) past the window; greedy generation
against HF's `generate`; both rope spellings (transformers 5's `rope_parameters` by layer type,
the older `rope_theta` + `rope_local_base_freq` + `rope_scaling`) and `sliding_window_pattern`
read as HF reads them, written back in transformers 5's form that transformers reloads to the
same logits; the local and global thetas each changing the output; the text part of a
multimodal `Gemma3ForConditionalGeneration` checkpoint (both key layouts); what is refused, by name.

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on the logits and on every hidden state,
at the real (unpadded) positions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jimm_linen
import jimm_nnx
from jimm_linen.registry import decoders, families
from jimm_nnx import parity as nnx_parity
from jimm_nnx import reference as parity
from tests.helpers import (DecoderSetup, assert_cache_matches_hf, assert_close, assert_decoder_matches, bound,
                           cached_calls)

GEMMA3 = decoders()["gemma3_text"]
S, F = "sliding_attention", "full_attention"
CONFIG = GEMMA3.parity["gemma3-gqa-qknorm-linear-global-window5"]
UNTIED = GEMMA3.parity["gemma3-mqa-bias-finalcap-untied-window4"]
W, VOCAB, PAD = CONFIG["sliding_window"], CONFIG["vocab_size"], 0
# Row r has PADS[r] columns of left padding; PROMPT columns are prefilled, the rest of TOTAL fed
# one token at a time. Every row's prompt is longer than the window.
B, PROMPT, TOTAL, LENGTH = 3, 12, 18, 16
PADS = (0, 3, 6)
NEW = 10  # generated tokens


def left_padded(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(seed).randint(3, VOCAB, size=(B, length)).astype(np.int64)
    mask = (np.arange(length)[None] >= np.asarray(PADS)[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, PAD), mask


def real(x, mask):
    return parity.real_positions(x, mask)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> DecoderSetup:
    s = DecoderSetup.build("gemma3_text", CONFIG, tmp_path_factory.mktemp("gemma3"), seed=31)
    assert s.hf.config.layer_types == list(s.module.config.layer_kinds()) == [S, F, S, S]
    assert left_padded(PROMPT, 0)[1].sum(1).min() > W
    return s


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> DecoderSetup:
    """The second registry config: untied, K = 1, biases, the final soft-cap, window 4."""
    s = DecoderSetup.build("gemma3_text", UNTIED, tmp_path_factory.mktemp("gemma3-untied"), seed=32)
    assert s.hf.config.layer_types == list(s.module.config.layer_kinds()) == [F, S, F, S]
    return s


# --- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gemma3", "untied"])
def test_logits_and_hidden_states_match_hf(name, request):
    """Each registry config, a left-padded batch whose every prompt is longer than the window,
    through Linen and NNX: the logits and every hidden state are HF's."""
    s = request.getfixturevalue(name)
    assert s.module.config.local_rope != s.module.config.rope
    ids, mask = left_padded(LENGTH, seed=1)
    assert mask.sum(1).min() > s.module.config.sliding_window
    ref_logits, ref_hidden = parity.decoder_reference_outputs(s.hf, ids, mask)
    out = s.module.apply(s.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, f"{name} linen")
    out = s.lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, f"{name} nnx")


@pytest.mark.parametrize("face", ["linen", "nnx"])
def test_kv_cache_prefill_then_decode_matches_hf_full_forward(gemma3, face):
    """The prefill equals HF's forward on the prompt (every prompt longer than the window); each
    decoded token's logits and hidden states HF's full forward over the sequence so far at its
    last column, past the window, with a cache longer than the sequence."""
    ids, mask = left_padded(TOTAL, seed=2)
    call, init_cache = cached_calls(gemma3.module, gemma3.variables, gemma3.lm)[face]
    assert_cache_matches_hf(gemma3.hf, call, init_cache(B, TOTAL + 3), ids, mask, PROMPT, face)


def test_greedy_generation_equals_hf_generate(untied):
    """A left-padded batch, prompts past the window, greedy, Linen and NNX, token for token. The
    untied config: a tied head over these random N(0, 1) rows repeats the last token forever."""
    gemma3 = untied
    ids, mask = left_padded(LENGTH, seed=3)
    unused = VOCAB - 1
    with torch.no_grad():
        ref = gemma3.hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                                 do_sample=False, eos_token_id=unused, pad_token_id=PAD).numpy()
    new = ref[:, ids.shape[1]:]
    assert new.shape == (B, NEW) and (new != unused).all() and len(set(new[0].tolist())) > 3, new
    out = jimm_linen.generate(gemma3.module, gemma3.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              max_new_tokens=NEW, eos_token_id=unused, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    out = gemma3.lm.generate(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens=NEW,
                             eos_token_id=unused, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)


# --- rope per layer kind ----------------------------------------------------------------------------

def test_each_kinds_rope_and_the_window_change_the_output(gemma3):
    """Over the same weights, the local theta, the global rope (its linear scaling dropped) and
    the window each move the logits far beyond the tolerance: the per-kind ropes are really used."""
    ids, mask = left_padded(LENGTH, seed=4)
    ref_logits, _ = parity.decoder_reference_outputs(gemma3.hf, ids, mask)
    assert_close(real(gemma3.forward(ids, mask), mask), real(ref_logits, mask), what="logits")
    tol = bound(real(ref_logits, mask))
    cfg = gemma3.module.config
    for change in (dict(local_rope=dataclasses.replace(cfg.local_rope, rope_theta=2000.0)),
                   dict(rope=dataclasses.replace(cfg.rope, rope_type="default", params=())),
                   dict(layer_types=(F,) * 4)):
        moved = np.abs(real(gemma3.forward(ids, mask, **change), mask) - real(ref_logits, mask)).max()
        assert moved > 1e3 * tol, f"{change}: {moved}"


def old_spelling(hf: dict) -> dict:
    """The same config in the older spelling: `rope_theta` (global), `rope_local_base_freq`
    (local), `rope_scaling` (applied to the full-attention layers), no `rope_parameters`."""
    old = {k: v for k, v in hf.items() if k != "rope_parameters"}
    full, local = dict(hf["rope_parameters"][F]), hf["rope_parameters"][S]
    assert local["rope_type"] == "default"
    old["rope_theta"], old["rope_local_base_freq"] = full.pop("rope_theta"), local["rope_theta"]
    old["rope_scaling"] = full  # with its `rope_type`, as published Gemma 3 files write it
    return old


def test_both_rope_spellings_read_identically_and_write_back_for_transformers(gemma3, tmp_path):
    """The fixture's config.json (transformers 5's `rope_parameters` by layer type) and the same
    rope in the older spelling: one config for us, one `rope_parameters` for HF, the same logits.
    Saved, the config is in transformers 5's form, which transformers reloads to our logits."""
    hf = json.loads((gemma3.directory / "config.json").read_text())
    assert set(hf["rope_parameters"]) == {F, S}
    old = old_spelling(hf)
    ours_new, ours_old = GEMMA3.config_cls.from_hf_config(hf), GEMMA3.config_cls.from_hf_config(old)
    assert ours_new == dataclasses.replace(ours_old, kept=ours_new.kept)
    assert (ours_new.rope.rope_type, ours_new.rope.rope_theta, dict(ours_new.rope.params)) == ("linear", 1e5,
                                                                                                {"factor": 4.0})
    assert (ours_new.local_rope.rope_type, ours_new.local_rope.rope_theta) == ("default", 1000.0)
    hf_old = transformers.Gemma3TextConfig.from_dict(copy.deepcopy(old))
    assert hf_old.rope_parameters == transformers.Gemma3TextConfig.from_dict(copy.deepcopy(hf)).rope_parameters

    old_dir = tmp_path / "old"
    shutil.copytree(gemma3.directory, old_dir)
    (old_dir / "config.json").write_text(json.dumps(old))
    module, variables = jimm_linen.from_pretrained(old_dir)
    ids, mask = left_padded(LENGTH, seed=5)
    logits = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    np.testing.assert_array_equal(logits, gemma3.forward(ids, mask))

    jimm_linen.save_pretrained(module, variables, tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert written["rope_parameters"] == {F: {"rope_type": "linear", "rope_theta": 1e5, "factor": 4.0},
                                          S: {"rope_type": "default", "rope_theta": 1000.0}}
    assert not {"rope_theta", "rope_scaling", "rope_local_base_freq"} & set(written)
    reloaded = parity.load_reference(tmp_path / "saved")
    assert type(reloaded) is transformers.Gemma3ForCausalLM
    ref_logits, _ = parity.decoder_reference_outputs(reloaded, ids, mask)
    assert_close(real(logits, mask), real(ref_logits, mask), what="transformers on our checkpoint")


@pytest.mark.parametrize("edit", [
    pytest.param(dict(), id="defaults"),
    pytest.param(dict(sliding_window_pattern=3), id="pattern-3"),
    pytest.param(dict(rope_scaling={"rope_type": "linear", "factor": 8.0}), id="scaling-only"),
    # `type` instead of `rope_type`: HF's default entry's `rope_type` wins, the scaling is not
    # applied (transformers 5.25), and not here either.
    pytest.param(dict(rope_scaling={"type": "linear", "factor": 8.0}), id="scaling-type-key"),
    pytest.param(dict(rope_theta=5e5, rope_parameters={S: {"rope_type": "default", "rope_theta": 20.0}}),
                 id="per-kind-and-theta"),
])
def test_configs_read_as_hf_reads_them(edit):
    """`layer_types` from `sliding_window_pattern` (HF's default 6 when absent) and each kind's
    rope, against `Gemma3TextConfig` on the same dict; written back, HF reads the same."""
    base = dict(num_hidden_layers=7, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, vocab_size=96, model_type="gemma3_text")
    published = {**base, **edit}
    hf = transformers.Gemma3TextConfig.from_dict(copy.deepcopy({k: v for k, v in published.items()
                                                                if k != "model_type"}))
    ours = GEMMA3.config_cls.from_hf_config(copy.deepcopy(published))
    assert list(ours.layer_kinds()) == hf.layer_types
    read = normalised(hf.rope_parameters)
    assert {F: rope_dict(ours.rope), S: rope_dict(ours.local_rope)} == read
    back = ours.to_hf_config()
    assert GEMMA3.config_cls.from_hf_config(copy.deepcopy(back)) == ours
    again = transformers.Gemma3TextConfig.from_dict({k: v for k, v in back.items() if k != "model_type"})
    assert again.layer_types == hf.layer_types and normalised(again.rope_parameters) == read


def rope_dict(rope) -> dict:
    return {"rope_type": rope.rope_type, "rope_theta": rope.rope_theta, **dict(rope.params)}


def normalised(rope_parameters: dict) -> dict:
    """HF's per-kind rope dicts with what its rope functions never read dropped: a stray `type`
    beside `rope_type`, and the `factor` of a "default" rope."""
    return {kind: {k: v for k, v in p.items() if k != "type" and not (k == "factor" and p["rope_type"] == "default")}
            for kind, p in rope_parameters.items()}


# The fields of google/gemma-3-1b-it's config.json (transcribed: no hub here): the older rope
# spelling, `sliding_window_pattern`, `cache_implementation` (which HF's config class does not
# define), both soft-caps null. google/gemma-3-4b-it's text_config in its multimodal file adds the
# global linear scaling (factor 8) and omits what its defaults give.
GEMMA_3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144}
GEMMA_3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3", "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False}}


def test_published_configs_read_as_hf_reads_them():
    """gemma-3-1b-it as `Gemma3TextConfig` reads it; gemma-3-4b-it's text part as `Gemma3Config`
    reads its `text_config`: sizes, every layer's kind, both ropes; the 1B's written back, HF
    reads the same."""
    ours = GEMMA3.config_cls.from_hf_config(copy.deepcopy(GEMMA_3_1B))
    hf = transformers.Gemma3TextConfig.from_dict({k: v for k, v in GEMMA_3_1B.items() if k != "model_type"})
    mm_ours = families()["gemma3"].from_hf(copy.deepcopy(GEMMA_3_4B))
    mm_hf = transformers.Gemma3Config.from_dict({k: v for k, v in copy.deepcopy(GEMMA_3_4B).items()
                                                 if k != "model_type"}).text_config
    for config, ref in ((ours, hf), (mm_ours, mm_hf)):
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window", "rms_norm_eps",
                      "final_logit_softcapping", "max_position_embeddings", "tie_word_embeddings"):
            assert getattr(config, field) == getattr(ref, field), field
        assert list(config.layer_kinds()) == ref.layer_types
        assert {F: rope_dict(config.rope), S: rope_dict(config.local_rope)} == normalised(ref.rope_parameters)
    assert ours.layer_kinds().count(F) == 4 and ours.eos_token_id == (1, 106) == mm_ours.eos_token_id
    assert dict(mm_ours.rope.params) == {"factor": 8.0} and mm_ours.local_rope.rope_theta == 10000.0
    assert dict(ours.kept)["cache_implementation"] == '"hybrid"'
    back = ours.to_hf_config()
    assert GEMMA3.config_cls.from_hf_config(copy.deepcopy(back)) == ours
    again = transformers.Gemma3TextConfig.from_dict({k: v for k, v in back.items() if k != "model_type"})
    assert again.layer_types == hf.layer_types and normalised(again.rope_parameters) == normalised(hf.rope_parameters)


# --- the text part of Gemma3ForConditionalGeneration ---------------------------------------------------

VISION = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
              num_attention_heads=2, image_size=16, patch_size=4)


def multimodal(directory, seed: int):
    """A tiny `Gemma3ForConditionalGeneration` (the fixture's text config, a SigLIP tower),
    every tensor random, saved by transformers."""
    torch.manual_seed(seed)
    config = transformers.Gemma3Config(text_config=copy.deepcopy(CONFIG), vision_config=dict(VISION),
                                       mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2,
                                       eoi_token_index=VOCAB - 3)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    parity.randomize_(model, seed + 1)
    model.save_pretrained(directory)
    return model


def module_layout(directory, out):
    """The same checkpoint with the keys of transformers 5's modules (`model.language_model.*`,
    `model.vision_tower.*`, `model.multi_modal_projector.*`), as some hub files store them;
    transformers 5.25 itself saves the older names (`language_model.model.*`, `vision_tower.*`)."""
    shutil.copytree(directory, out)
    state = load_file(out / "model.safetensors")
    moved = {}
    for key, value in state.items():
        for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector."),
                         ("language_model.lm_head.", "lm_head.")):
            if key.startswith(old):
                key = new + key[len(old):]
                break
        moved[key] = value
    assert any(k.startswith("model.vision_tower.") for k in moved) and any(k.startswith("model.language_model.")
                                                                            for k in moved)
    save_file(moved, out / "model.safetensors", metadata={"format": "pt"})


def test_multimodal_checkpoints_text_part_matches_hf_text_logits(tmp_path):
    """Both key layouts load as `Gemma3` (the vision tower and projector keys ignored by name),
    Linen and NNX, and give HF's `Gemma3ForConditionalGeneration` logits and hidden states for
    text-only input; `jimm parity` checks the directory as a decoder. Saved, the model is a
    `gemma3_text` checkpoint."""
    hf = multimodal(tmp_path / "mm", seed=41)
    keys = load_file(tmp_path / "mm" / "model.safetensors")
    assert any(k.startswith("vision_tower.") for k in keys) and any(k.startswith("multi_modal_projector.")
                                                                     for k in keys)
    module_layout(tmp_path / "mm", tmp_path / "mm-new")
    ids, mask = left_padded(LENGTH, seed=6)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(hf, ids, mask)
    for directory in ("mm", "mm-new"):
        module, variables = jimm_linen.from_pretrained(tmp_path / directory)
        assert type(module) is jimm_linen.Gemma3 and module.config.layer_kinds() == (S, F, S, S)
        out = module.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
        assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, f"{directory} linen")
        lm = jimm_nnx.Gemma3.from_pretrained(tmp_path / directory, sharding=jimm_nnx.NoSharding())
        out = lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
        assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, f"{directory} nnx")
    # `jimm parity <directory>` takes it as a decoder: HF's logits, hidden states and greedy tokens.
    results = nnx_parity.check([tmp_path / "mm"])
    assert [r.path for r in results] == ["linen", "nnx"] and all(r.ok and r.greedy_agree == 1.0 for r in results)
    jimm_linen.save_pretrained(module, variables, tmp_path / "text")
    assert json.loads((tmp_path / "text" / "config.json").read_text())["model_type"] == "gemma3_text"
    # A key of neither the text model nor the vision side is still an error.
    state = load_file(tmp_path / "mm" / "model.safetensors")
    state["audio_tower.weight"] = np.zeros(2, np.float32)
    save_file(state, tmp_path / "mm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"audio_tower\.weight"):
        jimm_linen.from_pretrained(tmp_path / "mm")


# --- refusals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    pytest.param(dict(use_bidirectional_attention=True), r"use_bidirectional_attention=True", id="bidirectional"),
    pytest.param(dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
                 r"rope_parameters must be keyed by layer type", id="flat-rope-parameters"),
    pytest.param(dict(rope_parameters={F: {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                 r"partial_rotary_factor", id="partial-rotary"),
    pytest.param(dict(layer_types=[S, F]), r"for each of the 4 layers", id="layer-types-short"),
    pytest.param(dict(sliding_window=None), r"sliding_window is not set", id="no-window"),
])
def test_unsupported_configs_are_named(edit, message, gemma3, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(gemma3.directory, bad)
    hf = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**hf, **edit}))
    with pytest.raises(ValueError, match=message):
        jimm_linen.from_pretrained(bad)
    with pytest.raises(ValueError, match=message):
        jimm_nnx.CausalLM.from_pretrained(bad, sharding=jimm_nnx.NoSharding())


def test_attention_soft_cap_is_kept_unread_as_in_hf():
    """transformers' Gemma 3 never applies `attn_logit_softcapping` (the second registry config
    states 3.0 and matches HF uncapped): a file's value is kept and written back; ours cannot be
    set."""
    hf = dict(GEMMA3.parity["gemma3-mqa-bias-finalcap-untied-window4"], model_type="gemma3_text")
    ours = GEMMA3.config_cls.from_hf_config(copy.deepcopy(hf))
    assert ours.attn_logit_softcapping is None and ours.to_hf_config()["attn_logit_softcapping"] == 3.0
    assert ours.final_logit_softcapping == 15.0
    with pytest.raises(ValueError, match=r"attn_logit_softcapping=3.0: HF's Gemma 3 never applies"):
        dataclasses.replace(ours, attn_logit_softcapping=3.0)


@pytest.mark.parametrize("edit, message", [
    pytest.param(dict(text_config=dict(CONFIG, final_logit_softcapping=30.0)),
                 r"final_logit_softcapping=30.0: HF's Gemma3ForConditionalGeneration does not apply it",
                 id="final-cap"),
    pytest.param(dict(audio_config={}), r"\['audio_config'\] are not understood", id="unknown-field"),
    pytest.param(dict(text_config=dict(CONFIG, use_bidirectional_attention=True)),
                 r"use_bidirectional_attention=True", id="bidirectional"),
])
def test_unsupported_multimodal_configs_are_named(edit, message):
    hf = {**dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"], text_config=dict(CONFIG),
                 vision_config=dict(VISION), mm_tokens_per_image=4), **edit}
    with pytest.raises(ValueError, match=message):
        families()["gemma3"].from_hf(hf)


def test_the_multimodal_entry_is_no_decoder_family_of_its_own():
    mm = families()["gemma3"]
    assert mm.text_part and not mm.is_decoder and "gemma3" not in decoders()
    assert mm.module_cls is GEMMA3.module_cls and not mm.owns(GEMMA3.config_cls())


# --- real width -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_width_matches_pytorch(tmp_path):
    """Gemma-3-1B's width (4 heads of 256 over 1152, one key/value head), its sliding and full
    layer, through Linen and NNX; a 4096-token vocabulary (the real 262k rows only make the
    embedding longer, and the test slower)."""
    config = dict(GEMMA3.parity_full["gemma-3-1b-width-2layers"], vocab_size=4096)
    hf = parity.build_decoder_reference("gemma3_text", config, tmp_path, seed=0)
    ids, mask = parity.left_padded_ids(2, parity.DECODER_LENGTH, 4096, seed=0)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(hf, ids, mask)
    module, variables = jimm_linen.from_pretrained(tmp_path)
    out = module.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "linen")
    lm = jimm_nnx.Gemma3.from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    out = lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "nnx")
