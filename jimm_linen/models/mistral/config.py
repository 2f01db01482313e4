"""Mistral configuration: HF `MistralConfig`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses

from jimm_linen.layers.block_inputs import FULL, SLIDING
from jimm_linen.models.decoder import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class MistralConfig(CausalLMConfig):
    """HF `MistralConfig` (Mistral 7B's defaults): Llama's block, grouped-query attention and a
    sliding window on every layer (`sliding_window`; None is full attention, as HF's
    `MistralModel` builds its mask). `head_dim` may differ from hidden / heads (Mistral Nemo:
    128 over hidden 5120 and 32 heads). HF's Mistral attention has no biases whatever the
    config says: `attention_bias` is never read (a value in config.json is kept, ours stays
    False)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-6
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    sliding_window: int | None = 4096

    model_type = "mistral"
    architecture = "MistralForCausalLM"
    hf_unread = ("attention_bias",)

    def layer_kinds(self) -> tuple[str, ...]:
        return ((FULL if self.sliding_window is None else SLIDING),) * self.num_hidden_layers
