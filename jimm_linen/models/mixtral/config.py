"""Mixtral configuration: HF `MixtralConfig`'s fields and `config.json` round trip, and
`MoeConfig`, what the mixture-of-experts decoders share (Qwen3-MoE's config builds on it)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jimm_linen.layers.moe import IMPLEMENTATIONS
from jimm_linen.layers.rope import Rope
from jimm_linen.models.decoder import CausalLMConfig
from jimm_linen.models.mistral.config import MistralConfig

# Other MoE families' config fields, each with the values that ask for nothing (None included):
# a file giving one of them another value is some other architecture under this model_type (HF
# would build these families without it and drop the weights it has).
FOREIGN_MOE_FIELDS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "shared_expert_intermediate_size": ("a shared expert", (None, 0)),
    "n_shared_experts": ("shared experts", (None, 0)),
    "num_shared_experts": ("shared experts", (None, 0)),
    "first_k_dense_replace": ("dense first layers", (None, 0)),
    "routed_scaling_factor": ("scaled routing weights", (None, 1, 1.0)),
    "scoring_func": ("another router scoring", (None, "softmax")),
}


@dataclasses.dataclass(frozen=True)
class MoeConfig(CausalLMConfig):
    """HF's mixture-of-experts decoder fields: `num_experts_per_tok` (each token's top-k),
    `router_aux_loss_coef` and `output_router_logits`: as in HF, the training loss adds
    `router_aux_loss_coef * aux_loss` only when `output_router_logits` (set it with
    `from_pretrained(path, output_router_logits=True)`); the model's outputs do not depend on it
    (`apply(..., output_router_logits=True)` asks for the router logits).
    `moe_implementation` is ours, never in config.json: how `layers.moe.MoeBlock` computes the
    experts, `"auto"` (`"tiled"` on CPU, `"ragged"` elsewhere), `"ragged"`, `"tiled"` or `"dense"`
    (every expert on every token; the reference)."""

    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    moe_implementation: str = "auto"

    refused_fields: ClassVar[frozenset[str]] = frozenset(FOREIGN_MOE_FIELDS)

    def __post_init__(self):
        super().__post_init__()
        if self.moe_implementation not in IMPLEMENTATIONS:
            raise ValueError(f"moe_implementation must be one of {IMPLEMENTATIONS}, got {self.moe_implementation!r}")
        if self.num_routed_experts and not 1 <= self.num_experts_per_tok <= self.num_routed_experts:
            raise ValueError(f"num_experts_per_tok {self.num_experts_per_tok} must lie in [1, "
                             f"{self.num_routed_experts}] (the number of experts)")

    @property
    def num_routed_experts(self) -> int:
        raise NotImplementedError

    def moe_layers(self) -> tuple[bool, ...]:
        """Whether each layer's MLP is the mixture of experts (else a dense MLP)."""
        return (True,) * self.num_hidden_layers

    @classmethod
    def _own_fields(cls) -> tuple[str, ...]:
        return tuple(f for f in super()._own_fields() if f != "moe_implementation")

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        for field, (what, nothing) in FOREIGN_MOE_FIELDS.items():
            if field in hf and hf[field] not in nothing:
                raise ValueError(f"config field {field}={hf[field]!r} asks for {what}, which HF's {cls.architecture} "
                                 f"does not have: this is not a {cls.model_type} checkpoint")


@dataclasses.dataclass(frozen=True)
class MixtralConfig(MoeConfig):
    """HF `MixtralConfig` (Mixtral-8x7B's defaults): Mistral's attention (a sliding window on
    every layer when `sliding_window` is set; None, the default, is full attention), and in
    every layer a mixture of `num_local_experts` SwiGLU experts of width `intermediate_size`,
    each token through its `num_experts_per_tok` most probable ones, their weights renormalised.
    `router_jitter_noise` multiplies the experts' input by noise in [1 - j, 1 + j] in training
    (`train=True`, from the `dropout` stream), as HF does; evaluation never sees it. HF's
    Mixtral attention has no biases: `attention_bias` is never read (kept as written)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-5
    rope: Rope = Rope(rope_theta=1e6)
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    sliding_window: int | None = None
    num_local_experts: int = 8
    router_jitter_noise: float = 0.0

    model_type = "mixtral"
    architecture = "MixtralForCausalLM"
    hf_unread = ("attention_bias",)
    hf_aliases: ClassVar[dict[str, str]] = {"num_experts": "num_local_experts"}
    default_theta: ClassVar[float] = 1e6

    layer_kinds = MistralConfig.layer_kinds

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.router_jitter_noise < 1:
            raise ValueError(f"router_jitter_noise must lie in [0, 1), got {self.router_jitter_noise!r}")

    @property
    def num_routed_experts(self) -> int:
        return self.num_local_experts
