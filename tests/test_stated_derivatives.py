"""Softmax and LayerNorm with written-out derivatives: PyTorch's values and gradients, checked
derivatives to second order, and fewer backward-pass temporaries than autodiff through them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from jimm_linen.layers.attention_fns import softmax
from jimm_linen.layers import LayerNorm
from jimm_linen.layers.norm import _centered_rstd, standardize
from tests.helpers import assert_close

RNG = np.random.RandomState(0)
LOGITS = (RNG.randn(3, 5, 11) * 4).astype(np.float32)
LOGITS[1, 2, 3:] = np.finfo(np.float32).min  # a masked row, as dot_product_attention writes it
# A large common offset: a one-pass variance (E[x^2] - E[x]^2) would lose most digits here.
ACTS = (RNG.randn(3, 5, 16) * 3 + 100).astype(np.float32)


def test_softmax_matches_torch_values_and_gradient():
    cotangent = RNG.randn(*LOGITS.shape).astype(np.float32)
    x = torch.from_numpy(LOGITS).requires_grad_()
    expected = torch.softmax(x, dim=-1)
    expected.backward(torch.from_numpy(cotangent))
    y, pullback = jax.vjp(softmax, jnp.asarray(LOGITS))
    (dx,) = pullback(jnp.asarray(cotangent))
    assert_close(np.asarray(y), expected.detach().numpy(), what="softmax")
    assert_close(np.asarray(dx), x.grad.numpy(), what="softmax gradient")


def test_softmax_forward_is_jax_nn_softmax_bit_for_bit():
    np.testing.assert_array_equal(np.asarray(softmax(LOGITS)), np.asarray(jax.nn.softmax(LOGITS, axis=-1)))


def test_layer_norm_matches_torch_values_and_gradients():
    module = LayerNorm(1e-5)
    params = {"scale": jnp.asarray(RNG.randn(16), jnp.float32), "bias": jnp.asarray(RNG.randn(16), jnp.float32)}
    cotangent = RNG.randn(*ACTS.shape).astype(np.float32)
    x, w, b = (torch.from_numpy(np.array(a)).requires_grad_() for a in (ACTS, params["scale"], params["bias"]))
    expected = torch.nn.functional.layer_norm(x, (16,), w, b, eps=1e-5)
    expected.backward(torch.from_numpy(cotangent))

    y, pullback = jax.vjp(lambda p, v: module.apply({"params": p}, v), params, jnp.asarray(ACTS))
    dparams, dx = pullback(jnp.asarray(cotangent))
    assert_close(np.asarray(y), expected.detach().numpy(), what="LayerNorm")
    assert_close(np.asarray(dx), x.grad.numpy(), what="LayerNorm input gradient")
    assert_close(np.asarray(dparams["scale"]), w.grad.numpy(), what="LayerNorm scale gradient")
    assert_close(np.asarray(dparams["bias"]), b.grad.numpy(), what="LayerNorm bias gradient")


@pytest.mark.parametrize("fn", [softmax, lambda v: standardize(v, 1e-5)], ids=["softmax", "standardize"])
def test_derivatives_agree_with_finite_differences_to_second_order(fn):
    """The written-out JVP is itself differentiable (Hessian-vector products, forward-over-reverse)."""
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.randn(2, 3, 6))
        check_grads(fn, (x,), order=2, modes=("fwd", "rev"))


def _traced_softmax(x):
    # Autodiff through exp / sum / divide: `jax.nn.softmax` is that on jax < 0.12 only (0.12 turns
    # its `jax_softmax_custom_jvp` flag on by default, giving it a stated derivative like ours).
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return unnormalized / unnormalized.sum(-1, keepdims=True)


def _traced_standardize(x):
    centered, rstd = _centered_rstd(x, 1e-5)  # the same math, left to autodiff
    return centered * rstd


OURS = {"softmax": softmax, "standardize": lambda v: standardize(v, 1e-5)}
TRACED = {"softmax": _traced_softmax, "standardize": _traced_standardize}


@pytest.mark.parametrize("name", sorted(OURS))
def test_stated_derivative_keeps_fewer_temporaries(name):
    """A scanned stack of norm -> attention-like softmax -> projection: the same gradient as
    autodiff through the function, with fewer bytes kept for the backward pass."""
    x = jnp.asarray(RNG.randn(4, 32, 64), jnp.float32)
    w = jnp.asarray(RNG.randn(64, 64) * 0.1, jnp.float32)

    def grad_fn(fns):
        def loss(w, x):
            def layer(c, _):
                h = fns["standardize"](c) @ w
                return fns["softmax"](h @ jnp.swapaxes(h, 1, 2)) @ h + c, None
            y, _ = jax.lax.scan(layer, x, None, length=4)
            return (y * y).sum()
        return jax.jit(jax.grad(loss))

    ours, traced = grad_fn({**TRACED, name: OURS[name]}), grad_fn(TRACED)
    assert_close(np.asarray(ours(w, x)), np.asarray(traced(w, x)), what="stack gradient")
    temp = [f.lower(w, x).compile().memory_analysis().temp_size_in_bytes for f in (ours, traced)]
    assert temp[0] < 0.95 * temp[1], temp  # 9% (softmax) and 14% (standardize) fewer on XLA:CPU
