"""Small shared pieces for the tests."""

import jax
import numpy as np

from jimm_nnx.reference import RTOL

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            image_size=16, patch_size=4, num_labels=5)


def bound(ref, rtol: float = RTOL) -> float:
    """The parity bound: `rtol * max(1, max |ref|)` (float32 on CPU: rtol 1e-5)."""
    return rtol * max(1.0, float(np.abs(np.asarray(ref, np.float64)).max()))


def max_rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def assert_close(ours, ref, rtol: float = RTOL, what: str = "output"):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    assert diff <= bound(ref, rtol), f"{what}: max abs diff {diff:.3e} > {bound(ref, rtol):.3e}"


def assert_same_tree(a, b):
    """Same structure, dtypes and values, bit for bit."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def nhwc(pixels_nchw):
    return np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1))
