"""Llama (2, 3, 3.1, 3.2) configuration: HF `LlamaConfig`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jimm_linen.models.decoder import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class LlamaConfig(CausalLMConfig):
    """HF `LlamaConfig`. `rope` carries Llama 3's frequency scaling (`rope_type="llama3"`)."""

    mlp_bias: bool = False

    model_type = "llama"
    architecture = "LlamaForCausalLM"
    refused_fields: ClassVar[frozenset[str]] = frozenset({"pretraining_tp"})

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        if hf.get("pretraining_tp", 1) not in (None, 1):
            raise ValueError(f"pretraining_tp={hf['pretraining_tp']} (slicing the projections for Meta's "
                             f"tensor-parallel pretraining) is not supported; HF computes the same model with 1")
