"""Gemma configuration: HF `GemmaConfig`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jimm_linen.models.decoder import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class GemmaConfig(CausalLMConfig):
    """HF `GemmaConfig` (Gemma 7B's defaults): Llama's block with RMSNorm weights stored as
    `w` for a scale of `1 + w` (applied in float32, then cast), a GELU-gated MLP, embeddings
    scaled by `sqrt(hidden_size)`, a tied head. `head_dim` is its own (Gemma 7B: 16 heads of 256
    over hidden 3072). Gemma 1's published files say `hidden_act: "gelu"`, which HF reads as the
    tanh GELU they meant (`gelu_pytorch_tanh`), as here."""

    vocab_size: int = 256000
    hidden_size: int = 3072
    intermediate_size: int = 24576
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 16
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 1
    bos_token_id: int | None = 2

    model_type = "gemma"
    architecture = "GemmaForCausalLM"
    norm_order = "scale_then_cast"
    norm_offset = 1.0
    refused_fields: ClassVar[frozenset[str]] = frozenset({"use_bidirectional_attention"})

    def __post_init__(self):
        if self.hidden_act == "gelu":
            object.__setattr__(self, "hidden_act", "gelu_pytorch_tanh")
        super().__post_init__()

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        if hf.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention=True (every token attending to every other, for "
                             "embedding models) is not supported: jimm's decoders are causal")
