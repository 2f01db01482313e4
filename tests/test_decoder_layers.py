"""The decoders' shared pieces against HF's own functions: rotary frequencies of every rope_type,
RMSNorm (both dtype orders, Gemma's `1 + w`, its stated derivative), grouped-query attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

from jimm_linen.layers.attention import Attention
from jimm_linen.layers.attention_fns import dot_product_attention
from jimm_linen.layers.block_inputs import Own, Shared
from jimm_linen.layers.norm import RMSNorm, rms_normalize
from jimm_linen.layers.rope import Rope, frequencies, rotary_embedding
from tests.helpers import assert_close

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 50000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
             "beta_fast": 16.0, "beta_slow": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("name", sorted(ROPES))
@pytest.mark.parametrize("length", [40, 200])  # within and beyond max_position_embeddings (128)
def test_rotary_embedding_matches_transformers(name, length):
    hf = LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32, max_position_embeddings=128,
                     rope_parameters=dict(ROPES[name]))
    positions = np.arange(length)[None].repeat(2, 0)
    rope = Rope.from_hf({"rope_parameters": dict(ROPES[name])})
    if name == "dynamic" and length > 128:
        # Beyond max_position_embeddings the base is recomputed from the call's length. HF and we
        # round the stretched base to float32 differently (1 ulp), which position 199 turns into
        # ~1e-5 of angle; so this case compares the frequencies themselves (to 2 ulp).
        inv_ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, seq_len=length)
        inv, _ = frequencies(rope, jnp.asarray(positions), 32, 128)
        np.testing.assert_allclose(np.asarray(inv), inv_ref.numpy(), rtol=2.5e-7)
        return
    cos_ref, sin_ref = LlamaRotaryEmbedding(hf)(torch.zeros(1, dtype=torch.float32), torch.tensor(positions))
    cos, sin = rotary_embedding(rope, jnp.asarray(positions), 32, 128)
    assert_close(np.asarray(cos), cos_ref.numpy(), what=f"{name} cos")
    assert_close(np.asarray(sin), sin_ref.numpy(), what=f"{name} sin")
    if name != "dynamic":
        inv_ref, factor_ref = ROPE_INIT_FUNCTIONS.get(name, LlamaRotaryEmbedding.compute_default_rope_parameters)(hf)
        inv, factor = rope.inv_freq(32, 128)
        np.testing.assert_allclose(inv, inv_ref.numpy(), rtol=1e-6)
        assert factor == pytest.approx(factor_ref)


def test_rope_reads_old_and_new_config_spellings():
    new = Rope.from_hf({"rope_parameters": dict(ROPES["llama3"])})
    for old in ({"rope_theta": 500000.0, "rope_scaling": {**ROPES["llama3"], "rope_theta": None}},
                {"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **{k: v for k, v in ROPES["llama3"].items()
                                                                                if k not in ("rope_type", "rope_theta")}}}):
        old["rope_scaling"] = {k: v for k, v in old["rope_scaling"].items() if v is not None}
        assert Rope.from_hf(old) == new
    assert Rope.from_hf({}) == Rope("default", 10000.0)
    assert Rope.from_hf(new.to_hf()) == new


@pytest.mark.parametrize("hf, message", [
    ({"rope_parameters": {"rope_type": "ntk-magic", "rope_theta": 1.0}}, "unknown rope_type 'ntk-magic'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1.0}}, r"needs \['factor'\]"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1.0, "factor": 2.0, "beta_fast": 3}},
     r"does not take \['beta_fast'\]"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
])
def test_rope_errors_name_the_problem(hf, message):
    with pytest.raises(ValueError, match=message):
        Rope.from_hf(hf)


@pytest.mark.parametrize("order, reference", [("cast_then_scale", LlamaRMSNorm), ("scale_then_cast", Olmo2RMSNorm)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers(order, reference, dtype):
    rng = np.random.RandomState(0)
    x = rng.randn(3, 5, 48).astype(np.float32) * 3
    w = rng.randn(48).astype(np.float32)
    ref = reference(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref = ref.to(dtype)
        expected = ref(torch.from_numpy(x).to(dtype)).float().numpy()
    jdtype = jnp.float32 if dtype == torch.float32 else jnp.bfloat16
    params = {"params": {"scale": jnp.asarray(w).astype(jdtype)}}
    ours = RMSNorm(1e-5, order, dtype=jdtype, param_dtype=jdtype).apply(params, jnp.asarray(x).astype(jdtype))
    np.testing.assert_array_equal(np.asarray(ours.astype(jnp.float32)), expected) if dtype == torch.bfloat16 else \
        assert_close(np.asarray(ours), expected, what=order)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma_rms_norm_matches_transformers(dtype):
    """Gemma's `1 + w` (the stored weight is `w`), scaled in float32 and then cast. In bfloat16 HF's
    own forward runs on our float32 normalised values: XLA and torch sum the squares in different
    orders, 1 float32 ulp that moves about one bfloat16 output in 20000 by one ulp (this input
    has one), while a wrong order or offset moves many."""
    rng = np.random.RandomState(0)
    x = rng.randn(3, 5, 48).astype(np.float32) * 3
    w = rng.randn(48).astype(np.float32)
    jdtype = jnp.float32 if dtype == torch.float32 else jnp.bfloat16
    xj = jnp.asarray(x).astype(jdtype)
    ours = RMSNorm(1e-5, "scale_then_cast", dtype=jdtype, param_dtype=jdtype, offset=1.0).apply(
        {"params": {"scale": jnp.asarray(w).astype(jdtype)}}, xj)
    ref = GemmaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref = ref.to(dtype)
        xt = torch.from_numpy(x).to(dtype)
        if dtype == torch.float32:
            assert_close(np.asarray(ours), ref(xt).numpy(), what="GemmaRMSNorm")
            return
        assert_close(np.asarray(rms_normalize(xj.astype(jnp.float32), 1e-5)), ref._norm(xt.float()).numpy(),
                     what="float32 statistics")
        ref._norm = lambda _: torch.tensor(np.asarray(rms_normalize(xj.astype(jnp.float32), 1e-5)))
        np.testing.assert_array_equal(np.asarray(ours.astype(jnp.float32)), ref(xt).float().numpy())


def test_rms_norm_orders_differ_in_bfloat16():
    """The trap the two orders exist for: the same weights give different bf16 outputs."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(4, 64) * 3, jnp.bfloat16)
    params = {"params": {"scale": jnp.asarray(rng.randn(64), jnp.float32)}}
    a = RMSNorm(1e-6, "cast_then_scale", dtype=jnp.bfloat16).apply(params, x)
    b = RMSNorm(1e-6, "scale_then_cast", dtype=jnp.bfloat16).apply(params, x)
    assert not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_rms_norm_offset_starts_at_hfs_zeros_and_reaches_the_q_k_norms():
    """Gemma's stored weight is `w` for a scale of `1 + w`: initialised to zeros (HF's), and in the
    q/k norms of attention (Gemma 3's) the same weights plus one without the offset."""
    x = jnp.asarray(np.random.RandomState(4).randn(2, 5, 16), jnp.float32)
    norm = RMSNorm(1e-6, "scale_then_cast", offset=1.0)
    init = nn.unbox(norm.init(jax.random.key(0), x))
    np.testing.assert_array_equal(np.asarray(init["params"]["scale"]), np.zeros(16, np.float32))
    np.testing.assert_array_equal(np.asarray(norm.apply(init, x)), np.asarray(rms_normalize(x, 1e-6)))

    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    shared = Shared(positions=positions, key_valid=jnp.ones((2, 5), bool),
                    rotary=(rotary_embedding(Rope(), positions, 8, 64),))
    own = Own(kind=0)

    def attention(offset):
        return Attention(num_heads=4, num_kv_heads=2, head_dim=8, qk_norm="head", norm_order="scale_then_cast",
                         norm_offset=offset)

    params = nn.unbox(attention(1.0).init(jax.random.key(1), x, shared, own))["params"]
    rng = np.random.RandomState(5)
    for name in ("query_norm", "key_norm"):
        params[name]["scale"] = jnp.asarray(rng.randn(8), jnp.float32)
    plus_one = {k: {"scale": v["scale"] + 1.0} if k.endswith("_norm") else v for k, v in params.items()}
    ours = attention(1.0).apply({"params": params}, x, shared, own)[0]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(attention(0.0).apply({"params": plus_one}, x, shared,
                                                                                      own)[0]))
    assert not np.allclose(ours, attention(0.0).apply({"params": params}, x, shared, own)[0])


def test_rms_normalize_stated_derivative_matches_pytorch():
    rng = np.random.RandomState(2)
    x, g = rng.randn(6, 32).astype(np.float32), rng.randn(6, 32).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    (xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-6)).backward(torch.from_numpy(g))
    ours = jax.vjp(lambda v: rms_normalize(v, 1e-6), jnp.asarray(x))[1](jnp.asarray(g))[0]
    assert_close(np.asarray(ours), xt.grad.numpy(), what="rms_normalize gradient")


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_grouped_query_attention_equals_repeated_keys(kv_heads):
    """K key/value heads shared by N/K query heads each, as HF's `repeat_kv`, with a padding mask."""
    rng = np.random.RandomState(3)
    q = jnp.asarray(rng.randn(2, 5, 6, 8), jnp.float32)
    k, v = (jnp.asarray(rng.randn(2, 7, kv_heads, 8), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.rand(2, 1, 1, 7) > 0.3).at[..., -1].set(True)
    repeat = 6 // kv_heads
    expected = dot_product_attention(q, jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2), mask=mask,
                                     is_causal=True)
    ours = dot_product_attention(q, k, v, mask=mask, is_causal=True)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected)) if kv_heads == 6 else \
        assert_close(np.asarray(ours), np.asarray(expected), what="GQA")
    # Our causal diagonal ends at the last key (a cache's layout); jax.nn's starts at the first.
    causal = jnp.tril(jnp.ones((5, 7), bool), k=2)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask & causal)
    assert_close(np.asarray(ours), np.asarray(ref), what="vs jax.nn.dot_product_attention")


def test_attention_heads_must_divide():
    q, k = jnp.zeros((1, 2, 6, 4)), jnp.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="6 query heads cannot share 4 key/value heads"):
        dot_product_attention(q, k, k)
