"""Qwen3 (dense) configuration: HF `Qwen3Config`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

from jimm_linen.models.causal_lm import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class Qwen3Config(CausalLMConfig):
    """HF `Qwen3Config`: Llama's block with an RMSNorm on each query and key head. Sliding-window
    layers are refused (every layer attends to the whole context here); the window fields are
    kept for the round trip."""

    vocab_size: int = 151936
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    sliding_window: int | None = None
    max_window_layers: int = 28
    use_sliding_window: bool = False

    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    qk_norm = "head"
    passthrough = ("use_cache", "layer_types")

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        sliding = [t for t in hf.get("layer_types") or () if t != "full_attention"]
        if hf.get("use_sliding_window") or sliding:
            raise ValueError("use_sliding_window / sliding_attention layer_types: Qwen3's sliding-window "
                             "layers are not supported yet (every layer here attends to the whole context)")

    def to_hf_config(self) -> dict[str, Any]:
        return {**super().to_hf_config(), "layer_types": ["full_attention"] * self.num_hidden_layers}
