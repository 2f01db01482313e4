"""Gemma 2 configuration: HF `Gemma2Config`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses

from jimm_linen.activations import ACTIVATIONS
from jimm_linen.layers.block_inputs import FULL, SLIDING
from jimm_linen.models.gemma.config import GemmaConfig


@dataclasses.dataclass(frozen=True)
class Gemma2Config(GemmaConfig):
    """HF `Gemma2Config` (Gemma 2 2B's defaults): Gemma's norms and embeddings, an RMSNorm after
    attention and after the MLP as well as before, attention scaled by `query_pre_attn_scalar **
    -0.5` with its logits soft-capped (`attn_logit_softcapping`, None for none), the output
    logits soft-capped (`final_logit_softcapping`), sliding-window layers from `layer_types` (any
    pattern; absent, HF's: even layers slide, odd ones attend in full). The MLP's activation is
    `hidden_activation`, taken as written (`"gelu"` is the exact GELU here); HF's Gemma 2 never
    reads `hidden_act` (a value in config.json is kept, ours stays the default)."""

    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    hidden_activation: str = "gelu_pytorch_tanh"
    query_pre_attn_scalar: int = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    final_logit_softcapping: float | None = 30.0
    attn_logit_softcapping: float | None = 50.0

    model_type = "gemma2"
    architecture = "Gemma2ForCausalLM"
    hf_unread = ("hidden_act",)

    def __post_init__(self):
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_activation {self.hidden_activation!r}; supported: "
                             f"{sorted(ACTIVATIONS)}")
        super().__post_init__()

    def layer_kinds(self) -> tuple[str, ...]:
        if self.layer_types is not None:
            return self.layer_types
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
