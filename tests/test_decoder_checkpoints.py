"""Decoder checkpoints in and out (every registered family): round trips through transformers, tied heads,
shards, bf16, generation_config.json, scan <-> loop, Linen <-> NNX; strict errors for bad
files, bad configs and bad inputs, each naming the problem."""

from __future__ import annotations

import dataclasses
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
from jimm_nnx import reference as parity
from jimm_linen.checkpoint import CheckpointError
from jimm_linen.layers import loop_to_scan, scan_to_loop
from tests.helpers import assert_close, assert_same_tree

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, attention_bias=True)
CONFIGS = {"llama": dict(SMALL, mlp_bias=True, rope_parameters=dict(rope_type="linear", rope_theta=100.0, factor=2.0)),
           "qwen3": dict(SMALL, head_dim=6), "olmo2": dict(SMALL, num_key_value_heads=1)}
# Every other registered decoder through its first parity config: a new family's round trips run
# here without editing this file.
CONFIGS.update({fam: next(iter(f.parity.values())) for fam, f in parity.DECODERS.items() if fam not in CONFIGS})
ARCHITECTURES = {fam: f.config_cls.architecture for fam, f in parity.DECODERS.items()}
CASES = [(fam, tied) for fam in CONFIGS for tied in (False, True)]


@dataclasses.dataclass
class Case:
    family: str
    tied: bool
    directory: Path
    ids: np.ndarray
    mask: np.ndarray
    module: object
    variables: dict
    logits: np.ndarray  # ours, Linen, from the HF checkpoint


def forward(module, variables, ids, mask):
    return np.asarray(jax.jit(module.apply)(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))


def _case_id(c):
    return f"{c[0]}-{'tied' if c[1] else 'untied'}"


@pytest.fixture(scope="module", params=CASES, ids=[_case_id(c) for c in CASES])
def case(request, tmp_path_factory):
    family, tied = request.param
    directory = tmp_path_factory.mktemp(f"{family}-{tied}")
    seed = CASES.index(request.param)
    parity.build_decoder_reference(family, dict(CONFIGS[family], tie_word_embeddings=tied), directory, seed=seed)
    ids, mask = parity.left_padded_ids(2, 8, SMALL["vocab_size"], seed=seed)
    module, variables = jimm_linen.from_pretrained(directory)
    return Case(family, tied, directory, ids, mask, module, variables, forward(module, variables, ids, mask))


def hf_logits(directory, ids, mask, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    ref_logits, _ = parity.decoder_reference_outputs(model, ids, mask)
    return model, ref_logits


def real(x, case):
    return parity.real_positions(x, case.mask)


def test_round_trip_through_transformers(case, tmp_path):
    jimm_linen.save_pretrained(case.module, case.variables, tmp_path)
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(case.directory / "model.safetensors")
    # A tied head is the embedding: no lm_head.weight in the file, as transformers writes it.
    assert ("lm_head.weight" in saved) == (not case.tied)
    assert sorted(saved) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(saved[key], original[key], err_msg=key)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == [ARCHITECTURES[case.family]] and hf["tie_word_embeddings"] == case.tied
    model, ref_logits = hf_logits(tmp_path, case.ids, case.mask)
    assert type(model).__name__ == ARCHITECTURES[case.family]
    assert_close(real(case.logits, case), real(ref_logits, case), what="transformers on our checkpoint")


UNTIED = [c for c in CASES if not c[1]]


@pytest.mark.parametrize("case", UNTIED, ids=[_case_id(c) for c in UNTIED], indirect=True)
def test_scan_and_loop(case):
    loop_module, loop_variables = jimm_linen.from_pretrained(case.directory, scan=False)
    assert "layers_1" in loop_variables["params"]["decoder"] and "layers" not in loop_variables["params"]["decoder"]
    assert_same_tree(scan_to_loop(case.variables["params"]), loop_variables["params"])
    assert_same_tree(loop_to_scan(loop_variables["params"]), case.variables["params"])
    logits = forward(loop_module, loop_variables, case.ids, case.mask)
    assert_close(real(logits, case), real(case.logits, case), what="scan=False logits")


def test_linen_and_nnx_cross(case, tmp_path):
    lm = jimm_nnx.CausalLM.from_pretrained(case.directory, sharding=jimm_nnx.NoSharding())
    assert_same_tree(bridge.to_linen_variables(lm), case.variables)
    lm.save_pretrained(tmp_path / "nnx")
    assert_same_tree(jimm_linen.from_pretrained(tmp_path / "nnx")[1], case.variables)
    jimm_linen.save_pretrained(case.module, case.variables, tmp_path / "linen")
    family_cls = getattr(jimm_nnx, parity.DECODERS[case.family].nnx_name)
    restored = family_cls.from_pretrained(tmp_path / "linen", sharding=jimm_nnx.NoSharding())
    assert_same_tree(bridge.to_linen_variables(restored), case.variables)
    # A model built from the Linen variables is the same model.
    rebuilt = family_cls.from_linen_variables(case.module, case.variables, rules=None)
    assert_same_tree(bridge.to_linen_variables(rebuilt), case.variables)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The untied Llama case's directory, for the tests that edit files."""
    directory = tmp_path_factory.mktemp("llama-edit")
    parity.build_decoder_reference("llama", CONFIGS["llama"], directory, seed=11)
    return directory


def test_sharded_safetensors_both_ways(llama, tmp_path):
    module, variables = jimm_linen.from_pretrained(llama)
    jimm_linen.save_pretrained(module, variables, tmp_path, max_shard_bytes=4_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "model.safetensors").exists()
    assert_same_tree(jimm_linen.from_pretrained(tmp_path)[1], variables)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    original = load_file(llama / "model.safetensors")
    assert sorted(reloaded) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(reloaded[key].numpy(), value, err_msg=key)


def test_bf16_checkpoint_stays_bf16(tmp_path):
    model = parity.build_decoder_reference("qwen3", dict(CONFIGS["qwen3"], tie_word_embeddings=True), tmp_path / "f32")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    stored = load_file(tmp_path / "bf16" / "model.safetensors")
    module, variables = jimm_linen.from_pretrained(tmp_path / "bf16", param_dtype=None)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(np.asarray(variables["params"]["token_embedder"]["embedding"]),
                                  stored["model.embed_tokens.weight"])
    lm = jimm_nnx.Qwen3.from_pretrained(tmp_path / "bf16", param_dtype=None, sharding=jimm_nnx.NoSharding())
    assert_same_tree(bridge.to_linen_variables(lm), variables)
    jimm_linen.save_pretrained(module, variables, tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(saved) == sorted(stored)
    for key in stored:
        assert saved[key].dtype == stored[key].dtype and np.array_equal(saved[key], stored[key]), key
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto").dtype == torch.bfloat16
    # Asked for float32, the same values widened.
    _, as_f32 = jimm_linen.from_pretrained(tmp_path / "bf16", param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}


def test_generation_config_is_read_and_written(llama, tmp_path):
    from transformers import GenerationConfig

    directory = tmp_path / "in"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((llama / name).read_bytes())
    generation = {"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": 0, "do_sample": True,
                  "temperature": 0.6, "top_p": 0.9, "transformers_version": "5.24.0"}
    (directory / "generation_config.json").write_text(json.dumps(generation))
    module, variables = jimm_linen.from_pretrained(directory)
    assert module.config.eos_token_ids == (2, 7)
    assert dict(module.config.generation)["temperature"] == 0.6
    lm = jimm_nnx.Llama.from_pretrained(directory, sharding=jimm_nnx.NoSharding())
    assert lm.config.eos_token_ids == (2, 7)
    for saved in (jimm_linen.save_pretrained(module, variables, tmp_path / "linen"), lm.save_pretrained(tmp_path / "nnx")):
        written = json.loads((saved / "generation_config.json").read_text())
        assert written["eos_token_id"] == [2, 7] and (written["temperature"], written["top_p"]) == (0.6, 0.9)
        hf = GenerationConfig.from_pretrained(saved)
        assert (hf.eos_token_id, hf.pad_token_id, hf.do_sample, hf.temperature) == ([2, 7], 0, True, 0.6)
        assert jimm_linen.from_pretrained(saved)[0].config.eos_token_ids == (2, 7)
    # Without a generation_config.json the config's token ids are written into one.
    written = json.loads((jimm_linen.save_pretrained(*jimm_linen.from_pretrained(llama), tmp_path / "plain")
                          / "generation_config.json").read_text())
    assert (written["bos_token_id"], written["eos_token_id"]) == (1, 2)


# --- strictness: files, configs, inputs ------------------------------------------------------

def _edit(src: Path, dst: Path, state=None, config=None) -> Path:
    """A copy of checkpoint `src` with its tensors edited by `state(dict)` and its config.json by
    `config(dict)`."""
    dst.mkdir()
    hf = json.loads((src / "config.json").read_text())
    if config:
        config(hf)
    (dst / "config.json").write_text(json.dumps(hf))
    tensors = load_file(src / "model.safetensors")
    if state:
        state(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit,message", [
    pytest.param(lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
                 r"missing keys: .*model\.layers\.1\.mlp\.up_proj\.weight", id="missing"),
    pytest.param(lambda s: s.pop("lm_head.weight"), r"missing keys: .*lm_head\.weight", id="missing-untied-head"),
    pytest.param(lambda s: s.__setitem__("model.layers.2.self_attn.q_proj.weight", np.zeros((16, 16), np.float32)),
                 r"unexpected keys: .*model\.layers\.2\.self_attn\.q_proj\.weight", id="unexpected-layer"),
    pytest.param(lambda s: s.__setitem__("model.layers.0.self_attn.q_norm.weight", np.ones(4, np.float32)),
                 r"unexpected keys: .*model\.layers\.0\.self_attn\.q_norm\.weight", id="unexpected-qk-norm"),
    pytest.param(lambda s: s.__setitem__("model.layers.0.self_attn.k_proj.weight",
                                         s["model.layers.0.self_attn.k_proj.weight"][:4]),
                 r"mis-shaped keys: .*model\.layers\.0\.self_attn\.k_proj\.weight: checkpoint \(4, 16\), "
                 r"model expects \(8, 16\)", id="mis-shaped"),
])
def test_bad_checkpoint_keys_are_named(edit, message, llama, tmp_path):
    bad = _edit(llama, tmp_path / "bad", state=edit)
    with pytest.raises(CheckpointError, match=message):
        jimm_linen.from_pretrained(bad)
    with pytest.raises(CheckpointError, match=message):
        jimm_nnx.CausalLM.from_pretrained(bad, sharding=jimm_nnx.NoSharding())


def test_a_tied_checkpoint_that_stores_lm_head_loads(tmp_path):
    """Some tied checkpoints carry `lm_head.weight` anyway (the embedding again): it is not read."""
    parity.build_decoder_reference("olmo2", dict(CONFIGS["olmo2"], tie_word_embeddings=True), tmp_path / "tied")
    extra = _edit(tmp_path / "tied", tmp_path / "extra",
                  state=lambda s: s.__setitem__("lm_head.weight", s["model.embed_tokens.weight"]))
    assert_same_tree(jimm_linen.from_pretrained(extra)[1], jimm_linen.from_pretrained(tmp_path / "tied")[1])
    # Other values than the embedding: HF would untie (with a warning); we refuse, naming both.
    other = _edit(tmp_path / "tied", tmp_path / "other",
                  state=lambda s: s.__setitem__("lm_head.weight", s["model.embed_tokens.weight"] + 1.0))
    for load in (jimm_linen.from_pretrained, lambda d: jimm_nnx.CausalLM.from_pretrained(d, sharding=jimm_nnx.NoSharding())):
        with pytest.raises(CheckpointError, match=r"lm_head\.weight.*model\.embed_tokens\.weight"):
            load(other)


def _set(**fields):
    return lambda hf: hf.update(fields)


@pytest.mark.parametrize("family,edit,message", [
    pytest.param("llama", _set(pretraining_tp=2), r"pretraining_tp=2", id="pretraining_tp"),
    pytest.param("qwen3", _set(layer_types=["full_attention", "sliding_attention"]),
                 r"layer_types has sliding_attention layers but sliding_window is not set", id="sliding-without-window"),
    pytest.param("qwen3", _set(layer_types=["full_attention", "local"]), r"layer_types must give one of",
                 id="unknown-layer-type"),
    pytest.param("qwen3", _set(layer_types=["full_attention"]), r"for each of the 2 layers", id="layer-types-short"),
    pytest.param("llama", _set(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}),
                 r"unknown rope_type 'longrope'", id="unknown-rope_type"),
    pytest.param("llama", lambda hf: hf.update(rope_theta=hf.pop("rope_parameters")["rope_theta"],
                                               rope_scaling={"type": "su"}),
                 r"unknown rope_type 'su'", id="unknown-rope_scaling-type"),
    pytest.param("llama", _set(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0,
                                                "low_freq_factor": 1.0}),
                 r"rope_type 'linear' does not take \['low_freq_factor'\]", id="rope-key-of-another-type"),
    pytest.param("mistral", _set(sliding_window=0), r"sliding_window must be a positive whole number of tokens or "
                 r"None, got 0", id="window-0"),
    pytest.param("mistral", _set(sliding_window=4.5), r"got 4\.5", id="window-fractional"),
    pytest.param("olmo2", _set(is_causal=False), r"is_causal=False \(bidirectional attention", id="not-causal"),
    pytest.param("llama", _set(num_key_value_heads=3), r"num_key_value_heads 3 does not divide num_attention_heads 4",
                 id="kv-heads-not-dividing"),
])
def test_unsupported_configs_are_named(family, edit, message, case_dirs, tmp_path):
    bad = _edit(case_dirs[family], tmp_path / "bad", config=edit)
    with pytest.raises(ValueError, match=message):
        jimm_linen.from_pretrained(bad)
    with pytest.raises(ValueError, match=message):
        jimm_nnx.CausalLM.from_pretrained(bad, sharding=jimm_nnx.NoSharding())


@pytest.fixture(scope="module")
def case_dirs(tmp_path_factory, llama):
    """One untied checkpoint directory per family (Llama's is `llama`)."""
    dirs = {"llama": llama}
    for family in ("qwen3", "olmo2", "mistral"):
        dirs[family] = tmp_path_factory.mktemp(family)
        parity.build_decoder_reference(family, CONFIGS[family], dirs[family], seed=12)
    return dirs


def test_bad_inputs_at_call_time_are_named(llama):
    module, variables = jimm_linen.from_pretrained(llama)
    lm = jimm_nnx.Llama.from_pretrained(llama, sharding=jimm_nnx.NoSharding())
    ids = jnp.array([[3, 5, 7, 9]], jnp.int32)
    calls = {"linen": lambda *a: module.apply(variables, *a), "nnx": lambda *a: lm(*a)}
    for path, call in calls.items():
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\) \(the vocabulary\); got ids from 3 to 64"):
            call(ids.at[0, 1].set(64))
        with pytest.raises(ValueError, match=r"got ids from -1 to 9"):
            call(ids.at[0, 0].set(-1))
        with pytest.raises(ValueError, match=r"input_ids must be integer token ids, got dtype float32"):
            call(ids.astype(jnp.float32))
        with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\], got shape \(4,\)"):
            call(ids[0])
        with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\), input_ids \(1, 4\)"):
            call(ids, jnp.ones((1, 3), jnp.int32))
