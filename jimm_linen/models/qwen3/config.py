"""Qwen3 (dense) configuration: HF `Qwen3Config`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses

from jimm_linen.layers.block_inputs import FULL, SLIDING
from jimm_linen.models.decoder import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class Qwen3Config(CausalLMConfig):
    """HF `Qwen3Config`: Llama's block with an RMSNorm on each query and key head. Sliding-window
    layers as HF builds them: `layer_types` when given (any pattern), else the layers from
    `max_window_layers` on slide when `use_sliding_window`; the window is `sliding_window`
    only when `use_sliding_window` (HF sets it to None otherwise)."""

    vocab_size: int = 151936
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    use_sliding_window: bool = False
    layer_types: tuple[str, ...] | None = None

    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    qk_norm = "head"

    def __post_init__(self):
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        super().__post_init__()

    def layer_kinds(self) -> tuple[str, ...]:
        if self.layer_types is not None:
            return self.layer_types
        window = self.window(SLIDING)
        return tuple(SLIDING if window is not None and i >= self.max_window_layers else FULL
                     for i in range(self.num_hidden_layers))

    def window(self, kind: str) -> int | None:
        return self.sliding_window if kind == SLIDING and self.use_sliding_window else None
