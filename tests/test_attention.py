"""Attention backends: every one that runs on CPU matches the default, forward and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jimm_linen
from jimm_linen import ViT, ViTConfig, dot_product_attention, make_tokamax_attention
from tests.helpers import TINY

RNG = np.random.RandomState(0)
Q, K, V = (jnp.asarray(RNG.randn(2, 7, 4, 8), jnp.float32) for _ in range(3))
MASK = jnp.asarray(RNG.rand(2, 1, 7, 7) > 0.3).at[..., 0].set(True)

CPU_BACKENDS = ["xla", "xla_chunked", ["mosaic", "triton", "cudnn", "xla"], ["mosaic_tpu", "xla_chunked"]]
TOL = dict(rtol=1e-5, atol=1e-6)


def test_default_is_exact_softmax_attention():
    """Against a float64 numpy evaluation of softmax(q k^T / sqrt(d)) v."""
    q, k, v = (np.asarray(x, np.float64) for x in (Q, K, V))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
    logits = np.where(np.asarray(MASK), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bnts,bsnh->btnh", probs, v)
    np.testing.assert_allclose(dot_product_attention(Q, K, V, mask=MASK), expected, **TOL)
    causal = np.tril(np.ones((7, 7), bool))
    np.testing.assert_allclose(dot_product_attention(Q, K, V, is_causal=True),
                               dot_product_attention(Q, K, V, mask=jnp.asarray(causal)), **TOL)


@pytest.mark.parametrize("impls", CPU_BACKENDS, ids=str)
@pytest.mark.parametrize("masking", ["none", "mask", "causal"])
def test_backend_matches_default(impls, masking):
    attention = make_tokamax_attention(impls)
    kw = {"none": {}, "mask": {"mask": MASK}, "causal": {"is_causal": True}}[masking]

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v, **kw)))

    np.testing.assert_allclose(attention(Q, K, V, **kw), dot_product_attention(Q, K, V, **kw), **TOL)
    grads = jax.grad(loss, argnums=(1, 2, 3))(attention, Q, K, V)
    ref = jax.grad(loss, argnums=(1, 2, 3))(dot_product_attention, Q, K, V)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, **TOL)


CFG = ViTConfig(**TINY)
IMAGES = jnp.asarray(RNG.randn(2, 16, 16, 3), jnp.float32)


def _forward_and_grad(model, params):
    loss = lambda p: jnp.sum(model.apply({"params": p}, IMAGES) ** 2)  # noqa: E731
    return model.apply({"params": params}, IMAGES), jax.jit(jax.grad(loss))(params)


@pytest.fixture(scope="module")
def default_model_run():
    params = ViT(CFG).init(jax.random.key(0), IMAGES)["params"]
    return params, _forward_and_grad(ViT(CFG), params)


@pytest.mark.parametrize("impls", CPU_BACKENDS, ids=str)
def test_backend_in_the_model(default_model_run, impls):
    params, (ref_out, ref_grad) = default_model_run
    out, grad = _forward_and_grad(ViT(CFG, attention_fn=make_tokamax_attention(impls)), params)
    np.testing.assert_allclose(out, ref_out, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grad, ref_grad)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"unknown attention backend\(s\) \['flash'\]"):
        make_tokamax_attention(["flash", "xla"])
    with pytest.raises(ValueError, match="at least one backend"):
        make_tokamax_attention([])


def test_nothing_runs_here_names_what_was_tried():
    attention = make_tokamax_attention(["mosaic", "triton", "cudnn"])
    with pytest.raises(RuntimeError, match=r"none of the attention backends \['mosaic', 'triton', 'cudnn'\] runs on cpu.*mosaic: .*triton: .*cudnn: "):
        attention(Q, K, V)


def test_reexported_by_both_faces():
    import jimm_nnx

    assert jimm_nnx.make_tokamax_attention is jimm_linen.make_tokamax_attention
