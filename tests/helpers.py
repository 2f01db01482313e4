"""Small shared pieces for the tests."""

import numpy as np

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            image_size=16, patch_size=4, num_labels=5)


def max_rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def nhwc(pixels_nchw):
    return np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1))
