"""jimm's decoder families (every registered one) vs HF Transformers' PyTorch `LlamaForCausalLM`,
`Qwen3ForCausalLM`, `Olmo2ForCausalLM` (and the legacy HF Flax `FlaxLlamaForCausalLM`), float32 on CPU.

The configs are `jimm_nnx.reference`'s decoder defaults (what `jimm parity` runs): between them
K < N, K = N and K = 1, an explicit head_dim, every rope_type, tied and untied heads, each
family's biases, unusual rms_norm_eps and old-style config.json files; every tensor is random.
One HF model per config; each face of jimm (Linen, NNX) is loaded from its saved directory and
run once on a left-padded batch with an attention_mask.

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) on the logits and on every hidden state,
at the real (unpadded) positions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jimm_linen
from jimm_nnx import reference as parity
from jimm_linen.layers.rope import Rope, rotary_embedding
from jimm_linen.pretrained import FAMILIES
from tests import legacy_flax
from tests.helpers import assert_close

BATCH = 3
LENGTH = parity.DECODER_LENGTH
CASES = [(fam, name) for fam in parity.DECODERS for name in parity.DEFAULTS[fam]]


def _rope_type(config: dict) -> str:
    p = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return p.get("rope_type") or p.get("type") or "default"


SCALED = [case for case in CASES if _rope_type(parity.DEFAULTS[case[0]][case[1]]) != "default"]


@dataclasses.dataclass
class Reference:
    family: str
    config: dict
    directory: Path
    ids: np.ndarray
    mask: np.ndarray
    logits: np.ndarray
    hidden: list[np.ndarray]
    num_layers: int  # as HF's config reads it (GPT-2 spells it n_layer)


def build(family: str, config: dict, directory: Path, seed: int, batch: int = BATCH, length: int = LENGTH):
    model = parity.build_decoder_reference(family, config, directory, seed=seed)
    ids, mask = parity.left_padded_ids(batch, length, config["vocab_size"], seed=seed)
    logits, hidden = parity.decoder_reference_outputs(model, ids, mask)
    return Reference(family, config, directory, ids, mask, logits, hidden, model.config.num_hidden_layers)


@pytest.fixture(scope="module", params=CASES, ids=[name for _, name in CASES])
def reference(request, tmp_path_factory):
    family, name = request.param
    return build(family, parity.DEFAULTS[family][name], tmp_path_factory.mktemp(name), seed=CASES.index(request.param))


def assert_decoder_parity(out, ref: Reference, what: str = ""):
    """Logits and every hidden state (HF's: the embeddings, each block's output, the last one
    after the final norm) at the real positions."""
    n_layers = ref.num_layers
    assert len(ref.hidden) == len(out.hidden_states) == n_layers + 1
    assert out.logits.dtype == jnp.float32 and out.logits.shape == ref.logits.shape
    real = lambda x: parity.real_positions(x, ref.mask)  # noqa: E731
    assert_close(real(out.logits), real(ref.logits), what=f"{what}logits")
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref.hidden)):
        assert_close(real(ours), real(theirs), what=f"{what}hidden state {i}")
    # The last hidden state is the final norm's output, which the LM head reads.
    np.testing.assert_array_equal(np.asarray(out.last_hidden_state), np.asarray(out.hidden_states[-1]))


def linen_forward(model):
    return jax.jit(lambda v, ids, mask: model.apply(v, ids, mask, return_hidden_states=True))


def test_linen_matches_pytorch(reference):
    model, variables = jimm_linen.from_pretrained(reference.directory)
    out = linen_forward(model)(variables, jnp.asarray(reference.ids, jnp.int32), jnp.asarray(reference.mask))
    assert_decoder_parity(out, reference)


def test_nnx_matches_pytorch(reference):
    import jimm_nnx

    lm = jimm_nnx.CausalLM.from_pretrained(reference.directory, sharding=jimm_nnx.NoSharding())
    assert type(lm) is jimm_nnx.CausalLM and lm.config.model_type == reference.family
    out = lm(jnp.asarray(reference.ids, jnp.int32), jnp.asarray(reference.mask), return_hidden_states=True)
    assert_decoder_parity(out, reference, "nnx ")


def test_the_configs_cover_what_they_should():
    """The defaults keep covering each case this file claims (a config edited away from one
    would silently stop testing it)."""
    cfgs = [dict(c) for fam in parity.DECODERS for c in parity.DEFAULTS[fam].values()]
    grouped = [c for c in cfgs if "num_key_value_heads" in c]  # GPT-2's configs have no key/value heads of their own

    kv = {"K<N": lambda c: 1 < c["num_key_value_heads"] < c["num_attention_heads"],
          "K=N": lambda c: c["num_key_value_heads"] == c["num_attention_heads"],
          "K=1": lambda c: c["num_key_value_heads"] == 1}
    for case, holds in kv.items():
        assert any(map(holds, grouped)), case
    assert any("head_dim" in c and c["head_dim"] != c["hidden_size"] // c["num_attention_heads"] for c in cfgs)
    assert {_rope_type(c) for c in cfgs} == {"default", "linear", "dynamic", "yarn", "llama3"}
    assert any(_rope_type(c) == "dynamic" and c["max_position_embeddings"] < LENGTH for c in cfgs)
    assert {bool(c.get("tie_word_embeddings")) for c in cfgs} == {True, False}
    for fam, family in parity.DECODERS.items():  # each family's biases, where its HF model has them
        if "attention_bias" in family.config_cls._own_fields():
            assert any(c.get("attention_bias") for c in parity.DEFAULTS[fam].values()), fam
    assert any(c.get("mlp_bias") for c in parity.DEFAULTS["llama"].values())
    assert {tuple(c["rope_scaling"])[0] for c in cfgs if "rope_scaling" in c} >= {"type", "rope_type"}


@pytest.mark.parametrize("name", [n for n, c in parity.DEFAULTS["llama"].items() if "rope_scaling" in c])
def test_old_style_config_json_is_written_as_given(name, tmp_path):
    """`rope_theta` + `rope_scaling` (spelled `type` or `rope_type`) reach config.json as the
    kwargs give them, as older hub files have them; the parity tests above load these."""
    cfg = parity.DEFAULTS["llama"][name]
    parity.build_decoder_reference("llama", cfg, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" not in hf
    assert (hf["rope_theta"], hf["rope_scaling"]) == (cfg["rope_theta"], cfg["rope_scaling"])
    config = jimm_linen.from_pretrained(tmp_path)[0].config
    scaling = dict(cfg["rope_scaling"])
    assert config.rope == Rope(scaling.pop("type", None) or scaling.pop("rope_type"), cfg["rope_theta"],
                               tuple(sorted(scaling.items())))


@pytest.mark.parametrize("name", [name for _, name in SCALED])
def test_the_inputs_reach_where_the_rope_scaling_matters(name):
    """At the positions of the batch above, each config's rotary embedding is far from the plain
    one (dynamic rescales: the batch is longer than its max_position_embeddings), so matching HF
    there means matching its scaling."""
    family = next(fam for fam, n in SCALED if n == name)
    config = FAMILIES[family].from_hf({**parity.DEFAULTS[family][name], "model_type": family})
    assert config.rope.rope_type == _rope_type(parity.DEFAULTS[family][name]) != "default"
    _, mask = parity.left_padded_ids(BATCH, LENGTH, config.vocab_size)
    positions = jnp.asarray(parity.hf_position_ids(mask))
    args = (positions, config.head_dim, config.max_position_embeddings)
    scaled = rotary_embedding(config.rope, *args)
    plain = rotary_embedding(Rope("default", config.rope.rope_theta), *args)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(scaled, plain)) > 1e-2


@pytest.mark.slow
def test_real_width_qwen3_matches_pytorch(tmp_path):
    """Qwen3-0.6B's width and heads (head_dim 128 over hidden 1024, 16 query and 8 key/value
    heads, tied), 2 layers, through Linen and NNX; a 4096-token vocabulary (the real one's 152k
    rows only make the embedding longer, and the test slower)."""
    import jimm_nnx

    config = dict(parity.FULL["qwen3"]["qwen3-0.6b-2layers"], vocab_size=4096, bos_token_id=None, eos_token_id=None)
    ref = build("qwen3", config, tmp_path, seed=0, batch=2)
    model, variables = jimm_linen.from_pretrained(tmp_path)
    out = linen_forward(model)(variables, jnp.asarray(ref.ids, jnp.int32), jnp.asarray(ref.mask))
    assert_decoder_parity(out, ref)
    lm = jimm_nnx.Qwen3.from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    assert_decoder_parity(lm(jnp.asarray(ref.ids, jnp.int32), jnp.asarray(ref.mask), return_hidden_states=True),
                          ref, "nnx ")


# --- the legacy HF Flax Llama (transformers 4.57.6) ---------------------------------------------

# What FlaxLlamaForCausalLM computes right: rope theta 10000 (it hard-codes it) and head_dim =
# hidden / heads; no mlp_bias (it has none); an untied head. GQA and attention biases it has.
LEGACY_LLAMA = dict(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                    num_key_value_heads=2, attention_bias=True, rms_norm_eps=2e-5, max_position_embeddings=64,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0))


@pytest.mark.legacy_flax
def test_llama_matches_legacy_flax(tmp_path):
    ref = build("llama", LEGACY_LLAMA, tmp_path / "checkpoint", seed=7)
    legacy = legacy_flax.run_decoder(ref.directory, "FlaxLlamaForCausalLM", ref.ids, ref.mask, tmp_path)

    model, variables = jimm_linen.from_pretrained(ref.directory)
    with jax.default_matmul_precision("highest"):
        out = linen_forward(model)(variables, jnp.asarray(ref.ids, jnp.int32), jnp.asarray(ref.mask))
    assert_decoder_parity(out, dataclasses.replace(ref, logits=legacy["logits"], hidden=legacy["hidden_states"]),
                          "legacy flax ")
