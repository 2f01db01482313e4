"""Gemma: Llama's block (its config offsets the RMSNorm weights by one and gates the MLP with a
tanh GELU) under embeddings scaled by `sqrt(hidden_size)`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jimm_linen.models.decoder import CausalLM
from jimm_linen.models.gemma.config import GemmaConfig
from jimm_linen.models.llama.model import LlamaBlock


def embed_scale(hidden_size: int, dtype) -> jnp.ndarray:
    """HF's `sqrt(hidden_size)`: a float32 tensor cast to the embeddings' dtype before the
    product (in bfloat16, 55.5 for Gemma 7B's 3072 where float32 holds 55.4256)."""
    return jnp.asarray(np.float32(hidden_size ** 0.5)).astype(dtype)


class Gemma(CausalLM):
    config: GemmaConfig
    block = LlamaBlock

    def embed(self, input_ids, positions):
        x = super().embed(input_ids, positions)
        return x * embed_scale(self.config.hidden_size, x.dtype)
