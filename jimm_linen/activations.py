"""Activation functions by HF `hidden_act` name.

Each name means exactly what it means in `transformers.activations.ACT2FN`: `jax.nn.gelu`
defaults to the tanh approximation, while HF's "gelu" is the exact erf form.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc

_SQRT_HALF = np.float32(2 ** -0.5)
_INV_SQRT_2PI = np.float32((2 * np.pi) ** -0.5)


@jax.custom_jvp
def gelu_exact(x):
    """`x * Phi(x)`, the erf GELU, with the same forward values as `jax.nn.gelu(x,
    approximate=False)`. Its derivative `Phi(x) + x * phi(x)` is written out so that autodiff
    keeps one tensor per call for the backward pass: differentiating through `erfc` kept three
    MLP-sized tensors per layer, ~40% of a ViT training step's temporaries, and an MLP stack's
    forward + backward runs ~20% faster this way on CPU (benchmarks/README)."""
    return x * (0.5 * erfc(-x * _SQRT_HALF.astype(x.dtype)))


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 * erfc(-x * _SQRT_HALF.astype(x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI.astype(x.dtype)
    return x * cdf, t * (cdf + x * pdf)


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "gelu": gelu_exact,
    "gelu_python": gelu_exact,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}"
        ) from None
