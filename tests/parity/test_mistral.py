"""jimm's Mistral vs HF Transformers' PyTorch `MistralForCausalLM`, float32 on CPU, where a sliding
window is in play: a left-padded batch whose prompts are all longer than the window, through the
full forward and through the KV cache (prefill, then one token at a time), greedy generation well
past the window against HF `generate`, and HF's window rule itself (a query sees the `W` most
recent keys, its own included) stated by perturbing single tokens.

The generic parity tests (`test_decoders.py`) run every config of the registry entry; this file
takes its windowed GQA config (`mistral-gqa-window5`).

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on the logits and on every hidden state,
at the real (unpadded) positions.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jimm_linen
from jimm_linen.registry import decoders
from jimm_nnx import reference as parity
from tests.helpers import (DecoderSetup, assert_cache_matches_hf, assert_close, assert_decoder_matches, bound,
                           cached_calls)

FAMILY = decoders()["mistral"]
CONFIG = FAMILY.parity["mistral-gqa-window5"]
W = CONFIG["sliding_window"]
VOCAB = CONFIG["vocab_size"]
PAD = 0
# The whole sequence: PROMPT columns are prefilled, the rest fed one token at a time. Row r has
# PADS[r] columns of left padding; every row's prompt is longer than the window.
B, PROMPT, TOTAL = 3, 12, 22
PADS = (0, 3, 6)
NEW = 14  # generated tokens: the prompt (16 columns) + 14 is six windows


def left_padded(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(seed).randint(3, VOCAB, size=(B, length)).astype(np.int64)
    mask = (np.arange(length)[None] >= np.asarray(PADS)[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, PAD), mask


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> DecoderSetup:
    s = DecoderSetup.build("mistral", CONFIG, tmp_path_factory.mktemp("mistral-window"), seed=11)
    assert type(s.hf).__name__ == "MistralForCausalLM" and s.hf.config.sliding_window == W
    assert s.module.config.layer_kinds() == ("sliding_attention",) * 2
    return s


def hf_forward(hf, ids, mask):
    """HF's logits and hidden states as `generate` computes them (positions from the mask)."""
    return parity.decoder_reference_outputs(hf, ids, mask)


def assert_matches(logits, hidden, ref_logits, ref_hidden, mask, what):
    assert len(hidden) == CONFIG["num_hidden_layers"] + 1
    assert_decoder_matches(logits, hidden, ref_logits, ref_hidden, mask, what)


# The published config.json files of mistralai/Mistral-7B-v0.1 and Mistral-Nemo-Base-2407.
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000}
MISTRAL_NEMO = dict(MISTRAL_7B, attention_dropout=0.0, head_dim=128, hidden_size=5120, max_position_embeddings=1024000,
                    num_hidden_layers=40, rope_theta=1000000.0, sliding_window=None, vocab_size=131072,
                    transformers_version="4.43.0.dev0")


def test_published_configs_read_as_hf_reads_them():
    config_cls = FAMILY.config_cls
    seven = config_cls.from_hf_config(MISTRAL_7B)
    assert (seven.head_dim, seven.num_key_value_heads, seven.sliding_window) == (128, 8, 4096)
    assert seven.layer_kinds() == ("sliding_attention",) * 32 and seven.window("sliding_attention") == 4096
    nemo = config_cls.from_hf_config(MISTRAL_NEMO)
    assert (nemo.hidden_size, nemo.num_attention_heads, nemo.head_dim) == (5120, 32, 128)
    assert nemo.layer_kinds() == ("full_attention",) * 40 and nemo.rope.rope_theta == 1e6
    for config, published in ((seven, MISTRAL_7B), (nemo, MISTRAL_NEMO)):
        back = config.to_hf_config()
        assert config_cls.from_hf_config(back) == config
        assert {k: back[k] for k in published if k != "rope_theta"} == {k: v for k, v in published.items()
                                                                       if k != "rope_theta"}
    # HF's Mistral attention has no biases whatever the config says: the field is kept, never read.
    biased = config_cls.from_hf_config(dict(MISTRAL_7B, attention_bias=True))
    assert biased.attention_bias is False and biased.to_hf_config()["attention_bias"] is True
    # HF's default has 8 key/value heads (not one per head), as ours.
    assert config_cls(num_attention_heads=32).num_key_value_heads == 8


def test_attention_bias_in_config_json_is_not_read(tmp_path):
    """A checkpoint whose config.json says `attention_bias: true`: HF builds no bias and stores
    none; jimm loads it without biases, matches HF, and writes the field back as read."""
    hf = parity.build_decoder_reference("mistral", dict(CONFIG, attention_bias=True), tmp_path / "hf", seed=13)
    assert hf.model.layers[0].self_attn.q_proj.bias is None
    module, variables = jimm_linen.from_pretrained(tmp_path / "hf")
    assert module.config.attention_bias is False
    ids, mask = left_padded(PROMPT, seed=5)
    ref_logits, _ = hf_forward(hf, ids, mask)
    logits = jax.jit(module.apply)(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_close(parity.real_positions(logits, mask), parity.real_positions(ref_logits, mask), what="logits")
    jimm_linen.save_pretrained(module, variables, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["attention_bias"] is True


def test_the_batch_is_longer_than_the_window():
    _, mask = left_padded(PROMPT + 4, 0)
    assert mask.sum(1).min() > W and mask[:, :PROMPT].sum(1).min() > W


def test_forward_matches_hf_without_cache(setup):
    ids, mask = left_padded(PROMPT + 4, seed=1)
    ref_logits, ref_hidden = hf_forward(setup.hf, ids, mask)
    linen = jax.jit(lambda v, i, m: setup.module.apply(v, i, m, return_hidden_states=True))
    out = linen(setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "linen")
    out = setup.lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "nnx")
    # The window matters on this batch: full attention over the same weights gives other logits.
    full = dataclasses.replace(setup.module.config, sliding_window=None)
    unwindowed = jax.jit(setup.module.clone(config=full).apply)(setup.variables, jnp.asarray(ids, jnp.int32),
                                                                jnp.asarray(mask))
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert np.abs(real(unwindowed) - real(ref_logits)).max() > 1e3 * bound(real(ref_logits))


@pytest.mark.parametrize("face", ["linen", "nnx"])
def test_kv_cache_prefill_then_decode_matches_hf_full_forward(setup, face):
    """The prefill equals HF's forward on the prompt; each decoded token's logits and hidden states
    equal HF's full forward over the sequence so far, at its last column. The sequence runs two
    windows past the prompt, and the cache is longer than it (unwritten slots stay masked)."""
    ids, mask = left_padded(TOTAL, seed=2)
    call, init_cache = cached_calls(setup.module, setup.variables, setup.lm)[face]
    assert_cache_matches_hf(setup.hf, call, init_cache(B, TOTAL + 3), ids, mask, PROMPT, face)


def test_greedy_generation_past_the_window_equals_hf_generate(setup):
    ids, mask = left_padded(PROMPT + 4, seed=3)
    with torch.no_grad():
        ref = setup.hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                                do_sample=False, pad_token_id=PAD).numpy()
    assert ref.shape == (B, PROMPT + 4 + NEW)
    new = ref[:, PROMPT + 4:]
    assert len(set(new[0].tolist())) > 3, f"a degenerate continuation tests little: {new}"
    out = jimm_linen.generate(setup.module, setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    nnx_out = setup.lm.generate(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(nnx_out.sequences), ref)


# --- HF's window rule -------------------------------------------------------------------------------

LENGTH = 13


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """The windowed config with one layer: its last logits read exactly the last `W` tokens."""
    directory = tmp_path_factory.mktemp("mistral-window-1layer")
    config = dict(CONFIG, num_hidden_layers=1)
    hf = parity.build_decoder_reference("mistral", config, directory, seed=12)
    return hf, *jimm_linen.from_pretrained(directory)


_JITTED: dict[int, tuple] = {}  # id(module) -> (forward, cached step), compiled once per module


def _last_logits(hf, module, variables, ids):
    """The last position's logits of one unpadded row: HF, jimm's forward, jimm through the cache
    (the row but its last token prefilled, then that token decoded)."""
    mask = np.ones_like(ids)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits[0, -1].numpy()
    ids32, m = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    if id(module) not in _JITTED:
        _JITTED[id(module)] = jax.jit(module.apply), jax.jit(lambda v, i, mk, c: module.apply(v, i, mk, cache=c))
    forward, step = _JITTED[id(module)]
    ours = np.asarray(forward(variables, ids32, m))[0, -1]
    _, cache = step(variables, ids32[:, :-1], m[:, :-1], module.init_cache(1, ids.shape[1]))
    cached, _ = step(variables, ids32[:, -1:], m[:, -1:], cache)
    return {"hf": theirs, "jimm": ours, "jimm cached": np.asarray(cached)[0, -1]}


@pytest.mark.parametrize("layers", [1, 2])
def test_a_query_sees_the_window_most_recent_keys_itself_included(setup, one_layer, layers):
    """HF's rule (`sliding_window_overlay`: `q - k < W`): the last query of one layer reads the
    tokens 0..W-1 places back, so a token W places back cannot move the last logits and one W-1
    back does. Stacked, `L` layers reach `L * (W - 1)` places back and no further."""
    hf, module, variables = one_layer if layers == 1 else (setup.hf, setup.module, setup.variables)
    reach = layers * (W - 1)
    assert reach + 1 < LENGTH
    ids = np.random.RandomState(4).randint(3, VOCAB, size=(1, LENGTH)).astype(np.int64)
    base = _last_logits(hf, module, variables, ids)
    assert_close(base["jimm"], base["hf"], what="last logits")
    assert_close(base["jimm cached"], base["hf"], what="cached last logits")

    def perturbed(back):
        changed = ids.copy()
        changed[0, LENGTH - 1 - back] = (changed[0, LENGTH - 1 - back] + 1 - 3) % (VOCAB - 3) + 3
        return _last_logits(hf, module, variables, changed)

    outside, inside = perturbed(reach + 1), perturbed(reach)
    for who in base:
        # Outside the window: a masked key contributes exactly nothing.
        np.testing.assert_array_equal(outside[who], base[who], err_msg=f"{who}: a token {reach + 1} back is seen")
        moved = float(np.abs(inside[who] - base[who]).max())
        assert moved > 1e-2 * max(1.0, float(np.abs(base[who]).max())), f"{who}: a token {reach} back is not seen"
    assert_close(inside["jimm"], inside["hf"], what="last logits, token inside the window changed")
    assert_close(inside["jimm cached"], inside["hf"], what="cached last logits, token inside the window changed")
