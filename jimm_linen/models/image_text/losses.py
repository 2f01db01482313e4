"""Image-text losses, equal to HF's `return_loss=True`, and zero-shot classification.

Both losses take the full `(texts, images)` logits matrix, so under `jit` with the batch sharded
over devices XLA gathers what each device needs; no per-device code is involved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _square(logits) -> None:
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"the loss pairs image i with text i, so logits must be square; got shape {logits.shape}")


def contrastive_loss(logits_per_text):
    """CLIP: the mean of text->image and image->text cross-entropy with the matching pair as the label."""
    _square(logits_per_text)
    logits = logits_per_text.astype(jnp.float32)

    def xent(lg):
        return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(lg, axis=-1)))

    return (xent(logits) + xent(logits.T)) / 2.0


def sigmoid_loss(logits_per_text):
    """SigLIP: `-sum log sigmoid(z * logits)` per text, z = +1 for the pair and -1 otherwise, averaged over texts."""
    _square(logits_per_text)
    logits = logits_per_text.astype(jnp.float32)
    z = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(z * logits), axis=-1))
