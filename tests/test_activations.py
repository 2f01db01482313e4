"""Each `hidden_act` name means what it means in HF Transformers (exact vs tanh GELU, quick_gelu)."""

import numpy as np
import pytest
import torch
from transformers.activations import ACT2FN

from jimm_linen.activations import ACTIVATIONS, get_activation

X = np.linspace(-6, 6, 2001, dtype=np.float32)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_matches_transformers(name):
    expected = ACT2FN[name](torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.asarray(get_activation(name)(X)), expected, rtol=1e-6, atol=1e-6)


def test_exact_and_tanh_gelu_differ():
    """The trap: `jax.nn.gelu` defaults to tanh; HF "gelu" is exact erf."""
    assert np.abs(np.asarray(get_activation("gelu")(X) - get_activation("gelu_new")(X))).max() > 1e-4


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unsupported hidden_act 'gelu_magic'"):
        get_activation("gelu_magic")
