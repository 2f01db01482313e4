"""jimm's Mixtral and Qwen3-MoE vs HF Transformers' PyTorch `MixtralForCausalLM` and
`Qwen3MoeForCausalLM`, float32 on CPU, on a left-padded batch whose tokens route unevenly (some
experts receive no token): logits, every hidden state, each MoE layer's router logits and HF's
`aux_loss` (padding left out, as HF's), Linen and NNX; the KV cache (prefill, then one token at a
time) against HF's full forward; greedy generation against HF `generate`; the training loss
against HF's `labels=` loss with its auxiliary term; both checkpoint layouts; the configs as HF
reads them, and what we refuse.

Mixtral runs its windowed 8-experts top-2 parity config; Qwen3-MoE its config with a dense layer
between two MoE layers (run in a loop: layers of different kinds cannot share one `nn.scan`).
The generic parity tests (`test_decoders.py`) run every parity config of both families.

Tolerance: max |jimm - ref| <= 1e-5 * max(1, max |ref|) at the real (unpadded) positions;
`aux_loss` within 1e-5 relative.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

import jimm_linen
import jimm_nnx
from jimm_linen import training
from jimm_linen.layers import scan_to_loop
from jimm_linen.layers.moe import MoeBlock, load_balancing_loss
from jimm_linen.registry import decoders
from jimm_nnx import reference as parity
from tests.helpers import assert_close, assert_same_tree, bound

CONFIGS = {"mixtral": "mixtral-gqa-window5-8experts-top2", "qwen3_moe": "qwen3moe-dense-layer-mqa-tied-window5"}
PAD = 0
# PROMPT columns prefilled, the rest decoded one at a time; row r has PADS[r] columns of padding.
B, PROMPT, TOTAL = 3, 12, 18
PADS = (0, 3, 7)
NEW = 10


def config(family: str) -> dict:
    return decoders()[family].parity[CONFIGS[family]]


def left_padded(family: str, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(seed).randint(3, config(family)["vocab_size"], size=(B, length)).astype(np.int64)
    mask = (np.arange(length)[None] >= np.asarray(PADS)[:, None]).astype(np.int64)
    return np.where(mask > 0, ids, PAD), mask


def skew_routers_(hf) -> None:
    """Every router's rows in K pairs of opposite rows, the rest zero: each pair has one positive
    logit, so a token's top K are exactly those, and the experts of the zero rows (logit 0) never
    get a token."""
    with torch.no_grad():
        for module in hf.modules():
            if type(module).__name__.endswith("TopKRouter"):
                w, k = module.weight, module.top_k
                w[1:2 * k:2] = -w[0:2 * k:2]
                w[2 * k:] = 0.0


@dataclasses.dataclass
class Setup:
    family: str
    directory: Path
    hf: torch.nn.Module
    module: object  # Linen
    variables: dict
    lm: object  # NNX

    @property
    def idle_experts(self) -> list[int]:
        k = config(self.family)["num_experts_per_tok"]
        return list(range(2 * k, self.module.config.num_routed_experts))


_SETUPS: dict[str, Setup] = {}


def get_setup(family: str, tmp_path_factory) -> Setup:
    if family not in _SETUPS:
        directory = tmp_path_factory.mktemp(family)
        hf = parity.build_decoder_reference(family, config(family), directory, seed=21)
        skew_routers_(hf)
        hf.save_pretrained(directory)
        module, variables = jimm_linen.from_pretrained(directory)
        lm = jimm_nnx.CausalLM.from_pretrained(directory, sharding=jimm_nnx.NoSharding())
        _SETUPS[family] = Setup(family, directory, hf, module, variables, lm)
    return _SETUPS[family]


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request, tmp_path_factory) -> Setup:
    return get_setup(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory) -> Setup:
    return get_setup("qwen3_moe", tmp_path_factory)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Setup:
    return get_setup("mixtral", tmp_path_factory)


def hf_forward(hf, ids, mask, **kwargs):
    with torch.no_grad():
        return hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  position_ids=torch.from_numpy(parity.hf_position_ids(mask)), output_hidden_states=True, **kwargs)


def assert_matches(logits, hidden, ref_logits, ref_hidden, mask, what):
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    assert len(hidden) == len(ref_hidden)
    assert_close(real(logits), real(ref_logits), what=f"{what} logits")
    for i, (ours, theirs) in enumerate(zip(hidden, ref_hidden)):
        assert_close(real(ours), real(theirs), what=f"{what} hidden state {i}")


def test_the_layers_are_what_the_config_says(setup):
    params = setup.variables["params"]["decoder"]
    if setup.family == "mixtral":  # one kind of layer: scanned, every layer's experts on a leading axis
        assert setup.module.config.moe_layers() == (True, True)
        assert params["layers"]["moe"]["wi_0"].shape == (2, 8, 32, 24)
    else:  # a dense layer between two MoE layers: a loop, each layer its own parameters
        assert setup.module.config.moe_layers() == (True, False, True) and setup.module.scan
        assert sorted(params) == ["decoder_norm", "layers_0", "layers_1", "layers_2"]
        assert "moe" in params["layers_0"] and "mlp" not in params["layers_0"]
        assert "mlp" in params["layers_1"] and "moe" not in params["layers_1"]
        assert params["layers_2"]["moe"]["wi_0"].shape == (6, 32, 16)
    assert type(setup.lm) is jimm_nnx.CausalLM and type(setup.lm.linen_module) is type(setup.module)


def test_forward_router_logits_and_aux_loss_match_hf(setup):
    ids, mask = left_padded(setup.family, PROMPT + 4, seed=1)
    ref = hf_forward(setup.hf, ids, mask, output_router_logits=True)
    ref_hidden = [h.numpy() for h in ref.hidden_states]
    ref_router = [r.numpy().reshape(B, ids.shape[1], -1) for r in ref.router_logits]
    # Uneven: the skewed routers leave some experts without a single token of the batch.
    for layer in ref_router:
        chosen = np.argsort(-layer, axis=-1)[..., :config(setup.family)["num_experts_per_tok"]]
        assert not np.isin(chosen, setup.idle_experts).any() and len(np.unique(chosen)) < layer.shape[-1]
    linen = jax.jit(lambda v, i, m: setup.module.apply(v, i, m, return_hidden_states=True, output_router_logits=True))
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    outs = {"linen": linen(setup.variables, *args),
            "nnx": setup.lm(*args, return_hidden_states=True, output_router_logits=True)}
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    for face, out in outs.items():
        assert_matches(out.logits, out.hidden_states, ref.logits.numpy(), ref_hidden, mask, face)
        assert len(out.router_logits) == len(ref_router) == sum(setup.module.config.moe_layers())
        for i, (ours, theirs) in enumerate(zip(out.router_logits, ref_router)):
            assert_close(real(ours), real(theirs), what=f"{face} router logits of MoE layer {i}")
        got, want = float(out.aux_loss), float(ref.aux_loss)
        assert abs(got - want) <= 1e-5 * abs(want), (face, got, want)
    # HF leaves the padding out of its aux_loss, and so do we: with the padding's router logits
    # in (whatever each model computes there), the loss is another.
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    k = config(setup.family)["num_experts_per_tok"]
    unmasked = {"ours": float(load_balancing_loss(jnp.stack(outs["linen"].router_logits), k)),
                "hf": float(load_balancing_loss_func(ref.router_logits, ref_router[0].shape[-1], k))}
    for who, value in unmasked.items():
        assert abs(value - float(ref.aux_loss)) > 1e-3 * float(ref.aux_loss), (who, value, float(ref.aux_loss))
    # The other paths (the default on CPU is "tiled"): the same model.
    for implementation in ("ragged", "dense"):
        other = setup.module.clone(config=dataclasses.replace(setup.module.config, moe_implementation=implementation))
        assert_close(real(jax.jit(other.apply)(setup.variables, *args)), real(ref.logits.numpy()),
                     what=f"{implementation} path logits")


def _cached_run(call, ids, mask, cache):
    """Prefill `PROMPT` columns, then one column at a time: `[(logits, hidden states)]`, one per call."""
    out = call(jnp.asarray(ids[:, :PROMPT], jnp.int32), jnp.asarray(mask[:, :PROMPT]), cache)
    outs, cache = [(out.logits, out.hidden_states)], out.cache
    for col in range(PROMPT, ids.shape[1]):
        out = call(jnp.asarray(ids[:, col:col + 1], jnp.int32), jnp.asarray(mask[:, col:col + 1]), cache)
        outs.append((out.logits, out.hidden_states))
        cache = out.cache
    assert int(cache.index) == ids.shape[1]
    return outs


@pytest.mark.parametrize("face", ["linen", "nnx"])
def test_kv_cache_prefill_then_decode_matches_hf_full_forward(setup, face):
    """The prefill equals HF's forward on the prompt; each decoded token's logits and hidden
    states equal HF's full forward over the sequence so far, at its last column (a decode step
    routes 3 tokens: most experts get none)."""
    ids, mask = left_padded(setup.family, TOTAL, seed=2)
    if face == "linen":
        apply = jax.jit(lambda v, i, m, c: setup.module.apply(v, i, m, cache=c, return_hidden_states=True))
        call = lambda i, m, c: apply(setup.variables, i, m, c)  # noqa: E731
        cache = setup.module.init_cache(B, TOTAL + 2)
    else:
        call = lambda i, m, c: setup.lm(i, m, cache=c, return_hidden_states=True)  # noqa: E731
        cache = setup.lm.init_cache(B, TOTAL + 2)
    outs = _cached_run(call, ids, mask, cache)
    ref = hf_forward(setup.hf, ids[:, :PROMPT], mask[:, :PROMPT])
    assert_matches(*outs[0], ref.logits.numpy(), [h.numpy() for h in ref.hidden_states], mask[:, :PROMPT],
                   f"{face} prefill")
    for step, (logits, hidden) in enumerate(outs[1:]):
        n = PROMPT + step + 1
        ref = hf_forward(setup.hf, ids[:, :n], mask[:, :n])
        assert_matches(logits, hidden, ref.logits.numpy()[:, -1:], [h.numpy()[:, -1:] for h in ref.hidden_states],
                       mask[:, n - 1:n], f"{face} decode step {step}")


def test_greedy_generation_equals_hf_generate(setup):
    ids, mask = left_padded(setup.family, PROMPT, seed=3)
    with torch.no_grad():
        ref = setup.hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                                do_sample=False, pad_token_id=PAD, eos_token_id=None).numpy()
    assert ref.shape == (B, PROMPT + NEW) and len(np.unique(ref[:, PROMPT:])) > 3, ref[:, PROMPT:]  # not degenerate
    out = jimm_linen.generate(setup.module, setup.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=())
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    out = setup.lm.generate(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens=NEW, pad_token_id=PAD,
                            eos_token_id=())
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)


def test_training_loss_is_hfs_labels_loss_with_its_auxiliary_term(setup):
    """HF adds `router_aux_loss_coef * aux_loss` to its `labels=` loss when
    `output_router_logits` (the config's, or the call's); the train step's loss does so when the
    config's is set, and its metrics report the cross-entropy and the added term."""
    ids = np.random.RandomState(4).randint(3, config(setup.family)["vocab_size"], size=(2, 10)).astype(np.int64)
    # A coefficient large enough that the term stands far above the tolerance.
    cfg = dataclasses.replace(setup.module.config, router_aux_loss_coef=0.1)
    for flag in (True, False):
        module = setup.module.clone(config=dataclasses.replace(cfg, output_router_logits=flag))
        with torch.no_grad():
            setup.hf.router_aux_loss_coef = cfg.router_aux_loss_coef
            ref = setup.hf(torch.from_numpy(ids), labels=torch.from_numpy(ids), output_router_logits=flag)
            setup.hf.router_aux_loss_coef = setup.hf.config.router_aux_loss_coef
        loss, metrics = jax.jit(lambda v, i, m=module: training.loss_and_metrics(m, v, i))(
            setup.variables, jnp.asarray(ids, jnp.int32))
        assert_close(loss, float(ref.loss), what=f"loss, output_router_logits={flag}")
        if flag:
            assert_close(metrics["aux_loss"], cfg.router_aux_loss_coef * float(ref.aux_loss), what="aux term")
            assert_close(metrics["cross_entropy"], float(ref.loss) - cfg.router_aux_loss_coef * float(ref.aux_loss),
                         what="cross-entropy")
            assert float(metrics["aux_loss"]) > 1000 * bound(float(ref.loss))  # the comparison sees the term
        else:
            assert "aux_loss" not in metrics and float(loss) == float(metrics["cross_entropy"])


# --- checkpoints ------------------------------------------------------------------------------

def test_transformers_in_memory_layout_loads_the_same_model(setup, tmp_path):
    """A file with transformers 5's module names (the fused `mlp.experts.gate_up_proj` /
    `down_proj` and, for Mixtral, `mlp.gate`) loads to the same parameters as the hub layout."""
    state = {k: v.clone().contiguous() for k, v in setup.hf.state_dict().items()}  # a tied head: the embedding
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((setup.directory / "config.json").read_text())
    assert_same_tree(jimm_linen.from_pretrained(tmp_path)[1], setup.variables)


def test_mixed_layers_round_trip_through_transformers(qwen3_moe, tmp_path):
    """The loop layout (a dense layer among MoE layers) writes the hub's per-expert keys, the
    dense layer's `mlp.*_proj`, and `num_experts` (the hub's spelling): the file transformers
    wrote, value for value, which it loads back to the same logits."""
    jimm_linen.save_pretrained(qwen3_moe.module, qwen3_moe.variables, tmp_path)
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(qwen3_moe.directory / "model.safetensors")
    assert sorted(saved) == sorted(original)
    assert "model.layers.2.mlp.experts.5.down_proj.weight" in saved and "model.layers.1.mlp.up_proj.weight" in saved
    for key in original:
        np.testing.assert_array_equal(saved[key], original[key], err_msg=key)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["num_experts"] == 6 and "num_local_experts" not in hf and hf["mlp_only_layers"] == [1]
    assert "moe_implementation" not in hf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert model.config.num_experts == 6
    ids, mask = left_padded("qwen3_moe", PROMPT, seed=5)
    ours = jax.jit(qwen3_moe.module.apply)(qwen3_moe.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_close(parity.real_positions(ours, mask), parity.real_positions(hf_forward(model, ids, mask).logits, mask),
                 what="transformers on our checkpoint")


# --- router jitter (Mixtral) ----------------------------------------------------------------------

def test_router_jitter_multiplies_the_experts_input_in_training_only(mixtral):
    """HF's `router_jitter_noise` j: in training, the MoE block's input (router and experts alike)
    times noise uniform in [1 - j, 1 + j]; in evaluation nothing."""
    cfg = dataclasses.replace(mixtral.module.config, router_jitter_noise=0.25)
    # The loop layout: under jax 0.12 / flax 0.12.12 a debug callback inside a Linen nn.scan body
    # fails ("broadcasted variable has a data dependency on the scan body").
    module, variables = mixtral.module.clone(config=cfg, scan=False), {"params": scan_to_loop(mixtral.variables["params"])}
    ids, mask = left_padded("mixtral", PROMPT, seed=6)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    real = lambda x: parity.real_positions(x, mask)  # noqa: E731
    plain = real(hf_forward(mixtral.hf, ids, mask).logits)
    assert_close(real(jax.jit(module.apply)(variables, *args)), plain, what="evaluation with router_jitter_noise")
    seen = {"norm": [], "moe": []}

    def keep(name):
        return lambda value: seen[name].append(np.asarray(value))

    def record(next_fun, args_, kwargs, context):  # each layer's values, in layer order
        out = next_fun(*args_, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, MoeBlock):
            jax.debug.callback(keep("moe"), args_[0], ordered=True)
        elif context.method_name == "__call__" and context.module.name == "pre_mlp_norm":
            jax.debug.callback(keep("norm"), out, ordered=True)
        return out

    train = jax.jit(lambda v, key, *a: module.apply(v, *a, train=True, rngs={"dropout": key}))
    with nn.intercept_methods(record):
        trained = np.asarray(train(variables, jax.random.key(0), *args))
    assert len(seen["moe"]) == len(seen["norm"]) == 2
    for moe_input, normed in zip(seen["moe"], seen["norm"]):
        noise = moe_input / normed
        assert 0.75 <= noise.min() < 0.76 and 1.24 < noise.max() <= 1.25, (noise.min(), noise.max())
    assert np.abs(real(trained) - plain).max() > 1e-2
    assert np.abs(real(train(variables, jax.random.key(1), *args)) - real(trained)).max() > 1e-2


# --- configs as HF reads them --------------------------------------------------------------------

# The published config.json files of mistralai/Mixtral-8x7B-v0.1 and Qwen/Qwen3-30B-A3B.
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": True,
    "vocab_size": 32000}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}
PUBLISHED = {"mixtral": MIXTRAL_8X7B, "qwen3_moe": QWEN3_30B_A3B}


def hf_config(published: dict):
    import transformers

    return transformers.AutoConfig.for_model(**published)


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_published_configs_read_as_hf_reads_them(family):
    published, config_cls = PUBLISHED[family], decoders()[family].config_cls
    ours, theirs = config_cls.from_hf_config(published), hf_config(published)
    for field in (*config_cls._own_fields(), "num_routed_experts"):
        value = getattr(ours, field)
        want = getattr(theirs, field) if field != "num_routed_experts" else theirs.num_experts
        if field == "head_dim" and want is None:  # HF's attention: hidden / heads
            want = theirs.hidden_size // theirs.num_attention_heads
        assert (list(value) if isinstance(value, tuple) else value) == want, field
    assert ours.rope.rope_theta == theirs.rope_parameters["rope_theta"] == 1e6
    assert ours.layer_kinds() == ("full_attention",) * published["num_hidden_layers"]
    assert all(ours.moe_layers()) and ours.moe_implementation == "auto"
    back = ours.to_hf_config()
    assert config_cls.from_hf_config(back) == ours
    for key, value in published.items():  # every field written back as read
        if key not in ("rope_theta", "rope_scaling"):
            assert back[key] == value, key
    assert "moe_implementation" not in back


def test_what_hf_defaults_or_spells_otherwise():
    import transformers

    # No rope keys: HF's Mixtral default base, 1e6 (Llama's is 1e4).
    bare = {k: v for k, v in MIXTRAL_8X7B.items() if k != "rope_theta"}
    assert jimm_linen.MixtralConfig.from_hf_config(bare).rope.rope_theta == 1e6
    assert transformers.MixtralConfig(**{k: v for k, v in bare.items() if k != "model_type"}).rope_parameters[
        "rope_theta"] == 1e6
    # transformers 5 writes Qwen3-MoE's expert count as `num_local_experts`; Mixtral's may be `num_experts`.
    qwen = {k: v for k, v in QWEN3_30B_A3B.items() if k != "num_experts"}
    assert jimm_linen.Qwen3MoeConfig.from_hf_config(dict(qwen, num_local_experts=64)).num_experts == 64
    mixtral = {k: v for k, v in MIXTRAL_8X7B.items() if k != "num_local_experts"}
    assert jimm_linen.MixtralConfig.from_hf_config(dict(mixtral, num_experts=4)).num_local_experts == 4
    # Nothing asked for: kept, written back.
    kept = jimm_linen.MixtralConfig.from_hf_config(dict(MIXTRAL_8X7B, n_shared_experts=0, router_jitter_noise=0.1))
    assert kept.to_hf_config()["n_shared_experts"] == 0 and kept.router_jitter_noise == 0.1


@pytest.mark.parametrize("decoder_sparse_step,mlp_only_layers", [(1, []), (2, []), (3, [1]), (1, [0, 4]), (2, [3])])
def test_dense_and_moe_layers_are_where_hf_puts_them(decoder_sparse_step, mlp_only_layers):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeDecoderLayer, Qwen3MoeSparseMoeBlock

    kwargs = dict(vocab_size=16, hidden_size=8, intermediate_size=8, moe_intermediate_size=4, num_hidden_layers=5,
                  num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
                  decoder_sparse_step=decoder_sparse_step, mlp_only_layers=mlp_only_layers)
    hf = Qwen3MoeConfig(**kwargs)
    want = tuple(isinstance(Qwen3MoeDecoderLayer(hf, i).mlp, Qwen3MoeSparseMoeBlock) for i in range(5))
    assert jimm_linen.Qwen3MoeConfig.from_hf_config(kwargs).moe_layers() == want


@pytest.mark.parametrize("family,fields,message", [
    ("qwen3_moe", dict(shared_expert_intermediate_size=5632),
     r"shared_expert_intermediate_size=5632 asks for a shared expert, which HF's Qwen3MoeForCausalLM does not have"),
    ("mixtral", dict(n_shared_experts=2), r"n_shared_experts=2 asks for shared experts"),
    ("qwen3_moe", dict(routed_scaling_factor=2.5), r"routed_scaling_factor=2\.5 asks for scaled routing weights"),
    ("mixtral", dict(router_jitter_noise=-0.1), r"router_jitter_noise must lie in \[0, 1\), got -0\.1"),
    ("qwen3_moe", dict(decoder_sparse_step=0), r"decoder_sparse_step must be a positive whole number, got 0"),
    ("qwen3_moe", dict(num_experts_per_tok=129), r"num_experts_per_tok 129 must lie in \[1, 128\]"),
    ("qwen3_moe", dict(num_local_experts=64),
     r"num_local_experts=64 and num_experts=128 name one setting \(HF reads num_local_experts as num_experts\)"),
])
def test_unsupported_configs_are_named(family, fields, message):
    with pytest.raises(ValueError, match=message):
        decoders()[family].config_cls.from_hf_config(dict(PUBLISHED[family], **fields))


def test_an_unsupported_checkpoint_config_is_named_by_both_loaders(mixtral, tmp_path):
    hf = json.loads((mixtral.directory / "config.json").read_text())
    tmp_path.joinpath("config.json").write_text(json.dumps(dict(hf, shared_expert_intermediate_size=64)))
    tmp_path.joinpath("model.safetensors").symlink_to(mixtral.directory / "model.safetensors")
    for load in (jimm_linen.from_pretrained, lambda d: jimm_nnx.Mixtral.from_pretrained(d, sharding=jimm_nnx.NoSharding())):
        with pytest.raises(ValueError, match=r"shared_expert_intermediate_size=64 asks for a shared expert"):
            load(tmp_path)
    with pytest.raises(ValueError, match=r"moe_implementation must be one of \('auto', 'ragged', 'tiled', 'dense'\), "
                                         r"got 'sparse'"):
        dataclasses.replace(mixtral.module.config, moe_implementation="sparse")


# --- real widths ----------------------------------------------------------------------------------

# Qwen3-30B-A3B's widths and heads with 1 layer, a 4096-token vocabulary and 16 of its 128 experts
# (more experts only repeat the same matmuls): 2048 hidden, 32 query heads of 128 over 4 key/value
# heads, experts 768 wide, top 8 renormalised. (Mixtral-8x7B's widths are Mistral-7B's, its experts
# 4096 x 14336: a minute here with 3 experts; `jimm parity --full --family mixtral` runs them.)
REAL_WIDTHS = {
    "qwen3_moe": dict(decoders()["qwen3_moe"].parity_full["qwen3-30b-a3b-2layers"], num_hidden_layers=1,
                      num_experts=16),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(REAL_WIDTHS))
def test_real_widths_match_pytorch(family, tmp_path):
    config = dict(REAL_WIDTHS[family], vocab_size=4096, bos_token_id=None, eos_token_id=None)
    hf = parity.build_decoder_reference(family, config, tmp_path, seed=0)
    ids, mask = parity.left_padded_ids(2, 12, config["vocab_size"], seed=0)
    ref = hf_forward(hf, ids, mask, output_router_logits=True)
    del hf
    module, variables = jimm_linen.from_pretrained(tmp_path)
    out = jax.jit(lambda v, i, m: module.apply(v, i, m, return_hidden_states=True, output_router_logits=True))(
        variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert_matches(out.logits, out.hidden_states, ref.logits.numpy(), [h.numpy() for h in ref.hidden_states], mask,
                   "linen")
    assert abs(float(out.aux_loss) - float(ref.aux_loss)) <= 1e-5 * float(ref.aux_loss)
    del variables
    lm = getattr(jimm_nnx, decoders()[family].nnx_name).from_pretrained(tmp_path, sharding=jimm_nnx.NoSharding())
    out = lm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), return_hidden_states=True)
    assert_matches(out.logits, out.hidden_states, ref.logits.numpy(), [h.numpy() for h in ref.hidden_states], mask,
                   "nnx")
