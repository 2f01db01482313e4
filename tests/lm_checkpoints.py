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

    from jimm_nnx import reference as parity

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


def hand_weights(mask, loss_mask=None) -> np.ndarray:
    """Which next tokens count, written out: target j (predicted at j - 1) counts when tokens
    j - 1 and j are real and j is selected by the loss mask. `[B, T - 1]`."""
    b, t = mask.shape
    loss_mask = np.ones((b, t), bool) if loss_mask is None else loss_mask
    w = np.zeros((b, t - 1), bool)
    for i in range(b):
        for j in range(1, t):
            w[i, j - 1] = mask[i, j - 1] and mask[i, j] and loss_mask[i, j]
    return w


def hf_positions(mask) -> np.ndarray:
    """The position ids HF's `generate` gives a left-padded batch (padding at 1)."""
    return np.where(mask, np.cumsum(mask, axis=1) - 1, 1)


def hf_forward(hf, ids, mask, loss_mask=None):
    """HF's output on a left-padded batch, with the loss of the targets `hand_weights` counts
    as its `labels=` loss (every other label -100)."""
    import torch

    keep = np.concatenate([np.zeros((ids.shape[0], 1), bool), hand_weights(mask, loss_mask)], axis=1)
    labels = np.where(keep, ids, -100)
    with torch.no_grad():
        return hf(torch.from_numpy(np.asarray(ids)).long(), attention_mask=torch.from_numpy(np.asarray(mask)).long(),
                  position_ids=torch.from_numpy(hf_positions(mask)).long(), labels=torch.from_numpy(labels).long())
