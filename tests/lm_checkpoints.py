"""A tiny HF Llama checkpoint for the training and decoder-sharding tests: HF's own
`LlamaForCausalLM` with every tensor random (norm weights perturbed), saved with
`save_pretrained`. Sizes divide the 8 fake devices' `(2, 2, 2)` mesh: batch 4 over
data x fsdp, embed 32 over fsdp, 4 query / 2 key-value heads, mlp 64 and vocab 128 over tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)
BATCH, LENGTH = 4, 12


def build_llama(directory: Path, seed: int = 0, **overrides):
    """Save a random `LlamaForCausalLM` to `directory`; returns the (eval-mode) torch model."""
    import torch
    import transformers

    from jimm_linen import parity

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **overrides})).eval()
    parity.perturb_(model, seed + 1)
    model.save_pretrained(directory)
    return model


def batch(seed: int = 0, left_pad=(0, 3, 0, 5)) -> dict[str, np.ndarray]:
    """Token ids `[BATCH, LENGTH]` and an attention mask left-padding each row by `left_pad`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, LLAMA["vocab_size"], (BATCH, LENGTH)).astype(np.int32)
    mask = np.arange(LENGTH)[None, :] >= np.asarray(left_pad)[:, None]
    return {"input_ids": np.where(mask, ids, 0).astype(np.int32), "attention_mask": mask}
