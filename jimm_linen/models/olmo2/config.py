"""OLMo 2 configuration: HF `Olmo2Config`'s fields and `config.json` round trip."""

from __future__ import annotations

import dataclasses

from jimm_linen.models.decoder import CausalLMConfig


@dataclasses.dataclass(frozen=True)
class Olmo2Config(CausalLMConfig):
    """HF `Olmo2Config`: q/k RMSNorm over the whole projections, norms after attention and MLP,
    and the RMSNorm weight applied before the cast back to the compute dtype."""

    vocab_size: int = 50304
    rms_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 50279

    model_type = "olmo2"
    architecture = "Olmo2ForCausalLM"
    norm_order = "scale_then_cast"
