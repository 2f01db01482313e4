"""jimm's GPT-2 vs HF Transformers' PyTorch `GPT2LMHeadModel` (and the legacy HF Flax
`FlaxGPT2LMHeadModel`), float32 on CPU: a left-padded batch through Linen, NNX and the loop
layout, the KV cache (prefill, then one token at a time) against HF's full forward, greedy
generation against HF `generate` with a row stopping early, HF's eager `reorder_and_upcast_attn`,
checkpoints saved from a `GPT2Model` and with the old `attn.bias` buffers, config.json as HF reads
it, positions past `n_positions`, dropout in training, and one real-width config (slow).

The generic parity tests (`test_decoders.py`) run every config of the registry entry; this file
takes its per-layer-scaled one (`scale_attn_by_inverse_layer_idx`, an odd head_dim, 3 layers).

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on the logits and on every hidden state,
at the real (unpadded) positions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import bridge
import jimm_linen
import jimm_nnx
from jimm_linen import generation, training
from jimm_linen.checkpoint import CheckpointError
from jimm_linen.registry import decoders
from jimm_nnx import reference as parity
from tests import legacy_flax
from tests import lm_checkpoints as lmc
from tests.helpers import assert_close, assert_same_tree
from tests.test_generation import early_eos

FAMILY = decoders()["gpt2"]
CONFIG = FAMILY.parity["gpt2-inverse-layer-idx-odd-head-dim"]
VOCAB, EOS, N_POSITIONS, LAYERS = CONFIG["vocab_size"], CONFIG["eos_token_id"], CONFIG["n_positions"], CONFIG["n_layer"]
PAD = 0
# The whole sequence: PROMPT columns are prefilled, the rest fed one token at a time. Row r has
# PADS[r] columns of left padding.
B, PROMPT, TOTAL = 3, 9, 14
PADS = (0, 2, 5)
NEW = 8


def left_padded(length: int, seed: int, pads=PADS) -> tuple[np.ndarray, np.ndarray]:
    """Random ids other than EOS, left-padded by `pads` (padding id 0)."""
    ids = np.random.RandomState(seed).randint(1, EOS, size=(len(pads), length)).astype(np.int64)
    mask = (np.arange(length)[None] >= np.asarray(pads)[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, PAD), mask


@dataclasses.dataclass
class Setup:
    directory: Path
    hf: torch.nn.Module
    module: object  # Linen
    variables: dict
    lm: object  # NNX


# The token table's scale in the fixture's model. At N(0, 1) (`build_decoder_reference`'s) the
# tied head gives the last token's own row a logit of |wte_t|^2 ~ n_embd that no block
# outweighs, and greedy repeats the prompt's last token: a continuation that tests little.
WTE_SCALE = 0.3


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    directory = tmp_path_factory.mktemp("gpt2")
    hf = parity.build_decoder_reference("gpt2", CONFIG, directory, seed=22)
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.scale_attn_by_inverse_layer_idx
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(WTE_SCALE)
    hf.save_pretrained(directory)
    module, variables = jimm_linen.from_pretrained(directory)
    assert type(module) is jimm_linen.GPT2 and module.config.head_dim == 9
    lm = jimm_nnx.GPT2.from_pretrained(directory, sharding=jimm_nnx.NoSharding())
    return Setup(directory, hf, module, variables, lm)


def assert_matches(logits, hidden, ref_logits, ref_hidden, mask, what):
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert len(hidden) == len(ref_hidden) == LAYERS + 1
    assert_close(real(logits), real(ref_logits), what=f"{what} logits")
    for i, (ours, theirs) in enumerate(zip(hidden, ref_hidden)):
        assert_close(real(ours), real(theirs), what=f"{what} hidden state {i}")


def test_every_tensor_of_the_reference_is_random(setup):
    """HF starts LayerNorms at (1, 0) and biases at 0: none may be left there, or a swapped or
    dropped one would go unseen."""
    for name, p in setup.hf.named_parameters():
        assert float(p.detach().std()) > 0.05, name
        if name.endswith("ln_1.weight") or name.endswith("ln_f.weight"):
            assert abs(float(p.detach().mean()) - 1.0) < 0.5, name  # around 1, not around 0


def test_forward_matches_hf_linen_nnx_and_loop(setup):
    ids, mask = left_padded(TOTAL, seed=1)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(setup.hf, ids, mask)
    inputs = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    out = jax.jit(lambda v, i, m: setup.module.apply(v, i, m, return_hidden_states=True))(setup.variables, *inputs)
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "linen")
    out = setup.lm(*inputs, return_hidden_states=True)
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "nnx")
    # In a loop each layer's scale is a Python float; under scan it is indexed by the traced layer.
    loop, loop_variables = jimm_linen.from_pretrained(setup.directory, scan=False)
    out = jax.jit(lambda v, i, m: loop.apply(v, i, m, return_hidden_states=True))(loop_variables, *inputs)
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "loop")
    # tokamax takes its scale as a Python float: the traced one goes into the query.
    tokamax, _ = jimm_linen.from_pretrained(setup.directory, attention_fn=jimm_linen.make_tokamax_attention("xla"))
    logits = jax.jit(tokamax.apply)(setup.variables, *inputs)
    assert_close(parity.real_positions(logits, mask), parity.real_positions(ref_logits, mask), what="tokamax logits")
    # The per-layer scale matters here: one scale for every layer gives other logits.
    plain = dataclasses.replace(setup.module.config, scale_attn_by_inverse_layer_idx=False)
    other = jax.jit(setup.module.clone(config=plain).apply)(setup.variables, *inputs)
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert np.abs(real(other) - real(ref_logits)).max() > 1e3 * 1e-5 * max(1.0, np.abs(real(ref_logits)).max())


def _cached_run(call, ids, mask, cache):
    """Prefill `PROMPT` columns, then one column at a time: `[(logits, hidden states)]`, one per call."""
    outs = []
    out = call(jnp.asarray(ids[:, :PROMPT], jnp.int32), jnp.asarray(mask[:, :PROMPT]), cache)
    outs.append((out.logits, out.hidden_states))
    cache = out.cache
    for col in range(PROMPT, ids.shape[1]):
        out = call(jnp.asarray(ids[:, col:col + 1], jnp.int32), jnp.asarray(mask[:, col:col + 1]), cache)
        outs.append((out.logits, out.hidden_states))
        cache = out.cache
    assert int(cache.index) == ids.shape[1]
    return outs


@pytest.mark.parametrize("face", ["linen", "nnx"])
def test_kv_cache_prefill_then_decode_matches_hf_full_forward(setup, face):
    """The prefill equals HF's forward on the prompt; each decoded token's logits and hidden
    states equal HF's full forward over the sequence so far (positions from the mask, as
    `generate` gives them), at its last column. The cache is longer than the sequence."""
    ids, mask = left_padded(TOTAL, seed=2)
    if face == "linen":
        apply = jax.jit(lambda v, i, m, c: setup.module.apply(v, i, m, cache=c, return_hidden_states=True))
        outs = _cached_run(lambda i, m, c: apply(setup.variables, i, m, c), ids, mask,
                           setup.module.init_cache(B, TOTAL + 3))
    else:
        outs = _cached_run(lambda i, m, c: setup.lm(i, m, cache=c, return_hidden_states=True), ids, mask,
                           setup.lm.init_cache(B, TOTAL + 3))
    ref_logits, ref_hidden = parity.decoder_reference_outputs(setup.hf, ids[:, :PROMPT], mask[:, :PROMPT])
    assert_matches(*outs[0], ref_logits, ref_hidden, mask[:, :PROMPT], f"{face} prefill")
    for step, (logits, hidden) in enumerate(outs[1:]):
        n = PROMPT + step + 1
        ref_logits, ref_hidden = parity.decoder_reference_outputs(setup.hf, ids[:, :n], mask[:, :n])
        assert logits.shape == (B, 1, VOCAB)
        assert_matches(logits, hidden, ref_logits[:, -1:], [h[:, -1:] for h in ref_hidden], mask[:, n - 1:n],
                       f"{face} decode step {step} (column {n - 1})")


def hf_generate(hf, ids, mask, eos) -> np.ndarray:
    with torch.no_grad():
        return hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                           do_sample=False, eos_token_id=eos, pad_token_id=PAD).numpy()


def test_greedy_generation_equals_hf_generate_with_a_row_stopping_early(setup):
    ids, mask = left_padded(PROMPT, seed=3)
    free = hf_generate(setup.hf, ids, mask, eos=VOCAB + 1)[:, PROMPT:]  # an id no row can produce
    assert len(set(free[0].tolist())) > 3, f"a degenerate continuation tests little: {free}"
    (eos,) = early_eos(free, rows=(1,))
    ref = hf_generate(setup.hf, ids, mask, eos=eos)
    assert ref.shape == (B, PROMPT + NEW)  # the other rows run to the end
    stop = list(ref[1, PROMPT:]).index(eos)
    assert stop < 3 and (ref[1, PROMPT + stop + 1:] == PAD).all()
    out = jimm_linen.generate(setup.module, setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    assert np.asarray(out.num_new_tokens).tolist() == [NEW, stop + 1, NEW]
    nnx_out = setup.lm.generate(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens=NEW, eos_token_id=eos,
                                pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(nnx_out.sequences), ref)


def test_reorder_and_upcast_attn_as_hfs_eager_attention_computes_it(setup):
    """HF's default (sdpa) attention ignores `reorder_and_upcast_attn`; its eager attention runs
    `_upcast_and_reordered_attn` (float32 q.k with the layer's scale as baddbmm's alpha)."""
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(setup.directory, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager" and eager.config.reorder_and_upcast_attn
    assert setup.module.config.reorder_and_upcast_attn
    calls = []
    eager.transformer.h[0].attn._upcast_and_reordered_attn = (
        lambda *a, f=eager.transformer.h[0].attn._upcast_and_reordered_attn, **k: calls.append(1) or f(*a, **k))
    ids, mask = left_padded(TOTAL, seed=4)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(eager, ids, mask)
    assert calls, "HF's eager attention did not take the reordered, upcast path"
    out = jax.jit(lambda v, i, m: setup.module.apply(v, i, m, return_hidden_states=True))(
        setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask, "eager reorder_and_upcast_attn")


# --- checkpoints --------------------------------------------------------------------------------

def _write(directory: Path, tensors: dict, config: dict) -> Path:
    directory.mkdir()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def old_buffers(n_positions: int) -> dict[str, np.ndarray]:
    """What transformers < 4.x saved in every layer besides the parameters: the causal mask
    `attn.bias` `[1, 1, n, n]` and `attn.masked_bias` (-1e4)."""
    out = {}
    for i in range(LAYERS):
        out[f"h.{i}.attn.bias"] = np.tril(np.ones((n_positions, n_positions), np.float32))[None, None]
        out[f"h.{i}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    return out


def test_a_gpt2model_checkpoint_with_the_old_buffers_loads(setup, tmp_path):
    """The OpenAI checkpoints on the hub: `GPT2Model` keys (no `transformer.`, no `lm_head`) and the
    `attn.bias` / `attn.masked_bias` buffers. transformers loads the file into GPT2LMHeadModel;
    so does jimm, to the same parameters."""
    saved = load_file(setup.directory / "model.safetensors")
    assert "lm_head.weight" not in saved and all(k.startswith("transformer.") for k in saved)
    bare = {k.removeprefix("transformer."): v for k, v in saved.items()}
    config = json.loads((setup.directory / "config.json").read_text())
    old = _write(tmp_path / "old", {**bare, **old_buffers(N_POSITIONS)}, dict(config, architectures=["GPT2Model"]))
    module, variables = jimm_linen.from_pretrained(old)
    assert_same_tree(variables, setup.variables)
    lm = jimm_nnx.CausalLM.from_pretrained(old, sharding=jimm_nnx.NoSharding())
    assert lm.config.model_type == "gpt2"
    assert_same_tree(bridge.to_linen_variables(lm), setup.variables)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(old, dtype=torch.float32).eval()
    ids, mask = left_padded(TOTAL, seed=5)
    ref_logits, _ = parity.decoder_reference_outputs(hf, ids, mask)
    logits = jax.jit(module.apply)(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_close(parity.real_positions(logits, mask), parity.real_positions(ref_logits, mask),
                 what="transformers on the GPT2Model file")
    # Written back as GPT2LMHeadModel.save_pretrained writes it.
    jimm_linen.save_pretrained(module, variables, tmp_path / "ours")
    written = load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(written) == sorted(saved)
    for key in saved:
        np.testing.assert_array_equal(written[key], saved[key], err_msg=key)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]


def test_nothing_else_is_ignored(setup, tmp_path):
    saved = load_file(setup.directory / "model.safetensors")
    config = json.loads((setup.directory / "config.json").read_text())
    cases = {
        "stray": ({**saved, "transformer.h.0.attn.bias_scale": np.ones(3, np.float32)},
                  r"unexpected keys: \['transformer\.h\.0\.attn\.bias_scale'\]"),
        "beyond-the-layers": ({**saved, f"transformer.h.{LAYERS}.attn.bias": np.ones(3, np.float32),
                               f"transformer.h.{LAYERS}.ln_1.weight": np.ones(36, np.float32)},
                              rf"unexpected keys: \['transformer\.h\.{LAYERS}\.ln_1\.weight"),
        "both-spellings": ({**saved, "wpe.weight": saved["transformer.wpe.weight"]},
                           r"keys naming the same parameter: .*transformer\.wpe\.weight and wpe\.weight"),
        "missing-c_attn": ({k: v for k, v in saved.items() if k != "transformer.h.1.attn.c_attn.weight"},
                           r"missing keys: .*transformer\.h\.1\.attn\.c_attn\.weight"),
        "fused-mis-shaped": (
            {**saved, "transformer.h.0.attn.c_attn.weight": saved["transformer.h.0.attn.c_attn.weight"][:, :72]},
            r"transformer\.h\.0\.attn\.c_attn\.weight: checkpoint \(36, 72\), model expects \(36, 108\)"),
    }
    for name, (tensors, message) in cases.items():
        bad = _write(tmp_path / name, tensors, config)
        with pytest.raises(CheckpointError, match=message):
            jimm_linen.from_pretrained(bad)
    # An untied GPT2Model file has no head to load: named, not made up.
    untied = _write(tmp_path / "untied", {k.removeprefix("transformer."): v for k, v in saved.items()},
                    dict(config, tie_word_embeddings=False))
    with pytest.raises(CheckpointError, match=r"missing keys: \['lm_head\.weight"):
        jimm_linen.from_pretrained(untied)


# --- configs ------------------------------------------------------------------------------------

# openai-community/gpt2's published config.json (the 124M model).
GPT2_124M = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
    "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
    "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257}
# Stanford CRFM's GPT-2 runs scale by the inverse layer index and reorder and upcast.
CRFM = dict(GPT2_124M, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, n_ctx=1024,
            summary_first_dropout=0.2, summary_type="last")


def hf_reads(config: dict):
    from transformers import GPT2Config

    return GPT2Config.from_dict({k: v for k, v in config.items() if k != "architectures"})


@pytest.mark.parametrize("published", [GPT2_124M, CRFM], ids=["gpt2", "crfm"])
def test_published_configs_read_as_hf_reads_them(published):
    config = FAMILY.config_cls.from_hf_config(published)
    hf = hf_reads(published)
    ours = {"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_positions": config.n_positions, "vocab_size": config.vocab_size,
            "activation_function": config.activation_function, "layer_norm_epsilon": config.layer_norm_epsilon,
            "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": config.reorder_and_upcast_attn,
            "tie_word_embeddings": config.tie_word_embeddings}
    assert ours == {k: getattr(hf, k) for k in ours}
    assert (config.head_dim, config.intermediate_size, config.eos_token_ids) == (64, 3072, (50256,))
    back = config.to_hf_config()
    assert FAMILY.config_cls.from_hf_config(back) == config
    # Every published field written back as published (n_ctx, summary_* and task_specific_params kept).
    assert {k: back[k] for k in published} == published
    assert "rope_parameters" not in back and "hidden_size" not in back


def test_config_fields_hf_does_not_read_are_kept_and_its_aliases_read():
    """GPT-2's HF model reads `n_embd` (or its alias `hidden_size`, which wins where a file has
    both), never `hidden_act`, `intermediate_size`, `head_dim` or a rope: those are kept."""
    odd = dict(GPT2_124M, hidden_size=96, n_head=4, hidden_act="relu", intermediate_size=10, head_dim=5,
               rope_theta=500.0, num_key_value_heads=1)
    config = FAMILY.config_cls.from_hf_config(odd)
    hf = hf_reads(odd)
    assert (config.n_embd, config.head_dim, config.activation_function) == (hf.n_embd, 24, hf.activation_function)
    assert (config.intermediate_size, config.num_key_value_heads) == (4 * hf.n_embd, hf.n_head)
    back = config.to_hf_config()
    assert back["n_embd"] == 96 and "hidden_size" not in back
    assert {k: back[k] for k in ("hidden_act", "intermediate_size", "head_dim", "rope_theta", "num_key_value_heads")} \
        == {"hidden_act": "relu", "intermediate_size": 10, "head_dim": 5, "rope_theta": 500.0, "num_key_value_heads": 1}


@pytest.mark.parametrize("edit,message", [
    (dict(add_cross_attention=True), r"add_cross_attention=True \(cross-attention layers .*\) is not supported"),
    (dict(n_embd=50, n_head=12), r"n_embd 50 is not divisible by n_head 12"),
    (dict(activation_function="gelu_10"), r"unsupported activation_function 'gelu_10'; supported: \['gelu', "),
    (dict(n_inner=0), r"n_inner must be a positive int or None \(4 \* n_embd\), got 0"),
    (dict(resid_pdrop=1.5), r"resid_pdrop must be a dropout probability in \[0, 1\], got 1\.5"),
    (dict(attn_pdrop=-0.1), r"attn_pdrop must be a dropout probability"),
    (dict(layer_norm_epsilon=-1e-5), r"layer_norm_epsilon must be a number >= 0"),
    (dict(pruned_heads={"0": [1]}), r"pruned_heads \{'0': \[1\]\} is not supported"),
], ids=["cross-attention", "heads", "activation", "n_inner", "resid_pdrop", "attn_pdrop", "eps", "pruned_heads"])
def test_bad_config_fields_are_refused_by_name(edit, message, setup, tmp_path):
    assert FAMILY.config_cls.from_hf_config(GPT2_124M)  # the file is fine before the edit
    with pytest.raises(ValueError, match=message):
        FAMILY.config_cls.from_hf_config(dict(GPT2_124M, **edit))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(setup.directory / "model.safetensors")
    (bad / "config.json").write_text(json.dumps(dict(json.loads((setup.directory / "config.json").read_text()),
                                                     **edit)))
    for load in (jimm_linen.from_pretrained,
                 lambda d: jimm_nnx.CausalLM.from_pretrained(d, sharding=jimm_nnx.NoSharding())):
        with pytest.raises(ValueError, match=message):
            load(bad)


# --- positions past n_positions -------------------------------------------------------------------

def test_positions_past_n_positions_are_refused_or_nan(setup):
    module, variables = setup.module, setup.variables
    # Row 0 reaches position N_POSITIONS; row 1, left-padded, stays below it.
    ids, mask = left_padded(N_POSITIONS + 1, seed=6, pads=(0, 8))
    with pytest.raises(ValueError, match=rf"positions must lie in \[0, {N_POSITIONS}\) \(GPT-2 learns "
                                         rf"n_positions={N_POSITIONS} position embeddings\); got positions from 0 "
                                         rf"to {N_POSITIONS}"):
        module.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    # Traced, no row reads another position's embedding: the row that runs past the table is NaN
    # (jnp.take's fill; the probabilities' zeros times its NaN values spread it over the row),
    # the other row is what HF computes.
    logits = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    assert np.isnan(logits[0]).all()
    ref1, _ = parity.decoder_reference_outputs(setup.hf, ids[1:], mask[1:])
    assert_close(parity.real_positions(logits[1:], mask[1:]), parity.real_positions(ref1, mask[1:]), what="row 1")
    # Generation refuses a prompt + max_new_tokens past n_positions before it runs.
    prompt, prompt_mask = left_padded(PROMPT, seed=7)
    says = (rf"the longest prompt \({PROMPT} tokens\) \+ max_new_tokens \({N_POSITIONS - PROMPT + 1}\) = "
            rf"{N_POSITIONS + 1} positions exceed max_position_embeddings \({N_POSITIONS}\)")
    for run in (lambda **kw: jimm_linen.generate(module, variables, **kw),
                lambda **kw: next(generation.stream(module, variables, **kw)),
                lambda **kw: setup.lm.generate(**kw)):
        with pytest.raises(ValueError, match=says):
            run(input_ids=prompt, attention_mask=prompt_mask, max_new_tokens=N_POSITIONS - PROMPT + 1)


# --- training -----------------------------------------------------------------------------------

RATES = dict(embd_pdrop=0.25, resid_pdrop=0.15, attn_pdrop=0.35)  # each its own, so no two can be swapped


@pytest.fixture(scope="module")
def dropping(setup):
    """The fixture's model with GPT-2's three dropout rates switched on."""
    return setup.module.clone(config=dataclasses.replace(setup.module.config, **RATES))


def test_dropout_is_hfs_in_training_and_off_in_eval(setup, dropping):
    ids, mask = left_padded(TOTAL, seed=8)
    ids32, m = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)

    @functools.partial(jax.jit, static_argnames="config")
    def run(variables, key, config):
        return dropping.clone(config=config).apply(variables, ids32, m, train=True, return_hidden_states=True,
                                                   rngs={"dropout": key})

    cfg, variables = dropping.config, setup.variables
    evaluated = jax.jit(lambda v: dropping.apply(v, ids32, m, return_hidden_states=True))(variables)
    ref_logits, _ = parity.decoder_reference_outputs(setup.hf, ids, mask)  # HF in eval mode: no dropout
    assert_close(parity.real_positions(evaluated.logits, mask), parity.real_positions(ref_logits, mask), what="eval")
    key = jax.random.key(0)
    train = run(variables, key, cfg)
    np.testing.assert_array_equal(np.asarray(train.logits), np.asarray(run(variables, key, cfg).logits))
    assert not np.allclose(np.asarray(train.logits), np.asarray(run(variables, jax.random.key(1), cfg).logits))
    # The embeddings (HF's hidden_states[0] is after `drop`): torch's inverted dropout, the kept
    # values scaled by 1 / (1 - p).
    emb, dropped = np.asarray(evaluated.hidden_states[0]), np.asarray(train.hidden_states[0])
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], emb[kept] / (1 - cfg.embd_pdrop), rtol=1e-6)
    assert abs((~kept).mean() - cfg.embd_pdrop) < 0.05
    # The residual branches' and the attention probabilities' rates each drop on their own.
    for name in ("resid_pdrop", "attn_pdrop"):
        alone = dataclasses.replace(cfg, **dict(dict.fromkeys(RATES, 0.0), **{name: RATES[name]}))
        logits = np.asarray(run(variables, key, alone).logits)
        assert not np.allclose(logits, np.asarray(evaluated.logits), atol=1e-3), f"{name} drops nothing"


def test_the_loss_is_hfs(setup):
    """The next-token loss (eval) over the targets whose token and predecessor are real, as HF's
    `labels=` loss over the same targets. (A train step on GPT-2, dropout on, costs ~8 s of
    compiling here: tests/test_training.py runs the step's machinery on Llama.)"""
    ids, mask = left_padded(TOTAL, seed=9)
    loss, count = jax.jit(lambda v, i, m: training.next_token_loss(setup.module, v, i, m))(
        setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    ref = lmc.hf_forward(setup.hf, ids, mask)
    assert int(count) == int(lmc.hand_weights(mask.astype(bool)).sum())
    assert_close(loss, ref.loss.item(), what="next-token loss")


def test_a_fresh_model_is_initialised_as_hfs():
    """From a config (training from scratch): both `c_proj`s scaled by 1 / sqrt(2 * n_layer)
    against the other kernels, as HF's `_init_weights` does; the embeddings at N(0, 0.02). (The
    kernels are truncated normals, HF's plain ones: the ratio is what both share.)"""
    import flax.linen as nn
    import transformers

    kwargs = dict(vocab_size=256, n_embd=128, n_layer=3, n_head=4, n_positions=64)
    torch.manual_seed(0)
    hf = dict(transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs)).named_parameters())
    module = jimm_linen.GPT2(FAMILY.config_cls.from_hf_config(kwargs))
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    layers = params["decoder"]["layers"]
    std = lambda x: float(np.std(np.asarray(x)))  # noqa: E731
    def hf_std(name):  # over the layers, as ours (stacked)
        return std(torch.stack([hf[f"transformer.h.{i}.{name}.weight"].detach() for i in range(3)]))

    for (block, dense), theirs in ((("self_attention", "out"), "attn.c_proj"), (("mlp", "Dense_1"), "mlp.c_proj")):
        ours_ratio = std(layers[block][dense]["kernel"]) / std(layers["mlp"]["Dense_0"]["kernel"])
        hf_ratio = hf_std(theirs) / hf_std("mlp.c_fc")
        assert abs(ours_ratio / hf_ratio - 1) < 0.03, (theirs, ours_ratio, hf_ratio)
    for ours, theirs in (("token_embedder", "wte"), ("position_embedder", "wpe")):
        assert abs(std(params[ours]["embedding"]) / std(hf[f"transformer.{theirs}.weight"].detach()) - 1) < 0.05, ours


# --- real width and the legacy HF Flax GPT-2 ------------------------------------------------------

@pytest.mark.slow
def test_real_width_matches_pytorch(tmp_path):
    """GPT-2 124M's width, heads, 50257-token tied vocabulary and 1024 positions, 2 layers,
    through Linen and NNX."""
    config = FAMILY.parity_full["gpt2-124m-2layers"]
    hf = parity.build_decoder_reference("gpt2", config, tmp_path, seed=23)
    ids, mask = parity.left_padded_ids(2, 24, config["vocab_size"], seed=23)
    ref_logits, ref_hidden = parity.decoder_reference_outputs(hf, ids, mask)
    module, variables = jimm_linen.from_pretrained(tmp_path)
    out = jax.jit(lambda v, i, m: module.apply(v, i, m, return_hidden_states=True))(
        variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert_close(real(out.logits), real(ref_logits), what="logits")
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref_hidden, strict=True)):
        assert_close(real(ours), real(theirs), what=f"hidden state {i}")
    lm = jimm_nnx.GPT2.from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    assert_close(real(lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask))), real(ref_logits), what="nnx logits")


# What FlaxGPT2LMHeadModel computes: HF's default scale (it has no scale_attn_weights and no
# per-layer scaling) and a tied head; n_inner, the activation and eps it reads.
LEGACY_GPT2 = dict(vocab_size=96, n_embd=48, n_layer=2, n_head=6, n_inner=40, activation_function="gelu",
                   layer_norm_epsilon=2e-5, n_positions=32, bos_token_id=95, eos_token_id=95)


@pytest.mark.legacy_flax
def test_matches_legacy_flax(tmp_path):
    parity.build_decoder_reference("gpt2", LEGACY_GPT2, tmp_path / "checkpoint", seed=24)
    ids, mask = left_padded(TOTAL, seed=10)
    legacy = legacy_flax.run_decoder(tmp_path / "checkpoint", "FlaxGPT2LMHeadModel", ids, mask, tmp_path)
    assert legacy["meta"]["config"]["n_inner"] == 40 and len(legacy["hidden_states"]) == 3

    module, variables = jimm_linen.from_pretrained(tmp_path / "checkpoint")
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda v, i, m: module.apply(v, i, m, return_hidden_states=True))(
            variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert_close(real(out.logits), real(legacy["logits"]), what="legacy flax logits")
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, legacy["hidden_states"], strict=True)):
        assert_close(real(ours), real(theirs), what=f"legacy flax hidden state {i}")
