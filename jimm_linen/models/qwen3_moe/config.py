"""Qwen3-MoE configuration: HF `Qwen3MoeConfig`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jimm_linen.layers.block_inputs import FULL, SLIDING
from jimm_linen.models.mixtral.config import MoeConfig
from jimm_linen.models.qwen3.config import Qwen3Config


@dataclasses.dataclass(frozen=True)
class Qwen3MoeConfig(MoeConfig):
    """HF `Qwen3MoeConfig`: Qwen3's attention (an RMSNorm on each query and key head), and a
    mixture of `num_experts` SwiGLU experts of width `moe_intermediate_size` in each layer HF
    makes sparse: layer i unless listed in `mlp_only_layers`, when `(i + 1) %
    decoder_sparse_step == 0`; the others a dense MLP of `intermediate_size`. Each token goes
    through its `num_experts_per_tok` most probable experts, their weights renormalised only when
    `norm_topk_prob`. Every layer slides over `sliding_window` when `use_sliding_window` (HF
    sets the window to None otherwise). `head_dim`, which HF's config class does not define,
    is read where given (HF's attention reads it), hidden / heads otherwise. `num_experts` is
    also read under the name transformers 5 writes, `num_local_experts`; we write `num_experts`,
    as the hub's files have it (older transformers read only that)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 32768
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 768
    num_experts_per_tok: int = 8
    num_experts: int = 128
    norm_topk_prob: bool = False
    mlp_only_layers: tuple[int, ...] = ()

    model_type = "qwen3_moe"
    architecture = "Qwen3MoeForCausalLM"
    qk_norm = "head"
    hf_aliases: ClassVar[dict[str, str]] = {"num_local_experts": "num_experts"}

    window = Qwen3Config.window

    def __post_init__(self):
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers or ()))
        super().__post_init__()
        if isinstance(self.decoder_sparse_step, bool) or not isinstance(self.decoder_sparse_step, int) \
                or self.decoder_sparse_step < 1:
            raise ValueError(f"decoder_sparse_step must be a positive whole number, got {self.decoder_sparse_step!r}")

    def layer_kinds(self) -> tuple[str, ...]:
        return ((FULL if self.window(SLIDING) is None else SLIDING),) * self.num_hidden_layers

    def moe_layers(self) -> tuple[bool, ...]:
        return tuple(i not in self.mlp_only_layers and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0
                     for i in range(self.num_hidden_layers))

    @property
    def num_routed_experts(self) -> int:
        return self.num_experts

    def to_hf_config(self) -> dict[str, Any]:
        return {**super().to_hf_config(), "mlp_only_layers": list(self.mlp_only_layers)}
