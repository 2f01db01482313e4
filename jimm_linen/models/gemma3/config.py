"""Gemma 3 (text) configuration: HF `Gemma3TextConfig`'s fields and `config.json` round trip,
and the text part of a multimodal `Gemma3Config` (`model_type: gemma3`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jimm_linen.layers.block_inputs import FULL, SLIDING
from jimm_linen.layers.rope import Rope
from jimm_linen.models.gemma2.config import Gemma2Config

# HF's `Gemma3TextConfig.default_theta`: global (full attention) and local (sliding) bases.
GLOBAL_THETA, LOCAL_THETA = 1_000_000.0, 10_000.0
# HF's `sliding_window_pattern` default: every 6th layer attends in full.
PATTERN = 6


def pattern_layer_types(num_layers: int, pattern: int) -> tuple[str, ...]:
    """HF's `layer_types` from `sliding_window_pattern`: layer i slides unless (i + 1) % pattern == 0."""
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))


def read_ropes(hf: dict[str, Any]) -> tuple[Rope, Rope]:
    """`(full_attention rope, sliding_attention rope)` as `Gemma3TextConfig.convert_rope_params_to_dict`
    reads them: `rope_parameters` keyed by layer type (transformers 5), `rope_scaling` updating the
    full-attention entry, then each kind's theta where its entry has none from `rope_theta`
    (global, default 1e6) and `rope_local_base_freq` (local, default 1e4). Consumes those keys."""
    params = hf.pop("rope_parameters", None)
    scaling = hf.pop("rope_scaling", None)
    theta, local_theta = hf.pop("rope_theta", None), hf.pop("rope_local_base_freq", None)
    params = dict(params or {})
    if set(params) - {FULL, SLIDING}:
        # HF would keep the stray keys beside its per-kind entries and read neither: a flat
        # `{"rope_type": ..., "rope_theta": ...}` here is a mistake, not a rope we can guess.
        raise ValueError(f"Gemma 3's rope_parameters must be keyed by layer type ({FULL!r}, {SLIDING!r}); "
                         f"got keys {sorted(params)}")
    full = dict(params.get(FULL) or {"rope_type": "default"})
    local = dict(params.get(SLIDING) or {"rope_type": "default"})
    if scaling:
        full.update(scaling)
    full.setdefault("rope_theta", GLOBAL_THETA if theta is None else theta)
    local.setdefault("rope_theta", LOCAL_THETA if local_theta is None else local_theta)
    return Rope.from_hf({"rope_parameters": full}), Rope.from_hf({"rope_parameters": local})


@dataclasses.dataclass(frozen=True)
class Gemma3Config(Gemma2Config):
    """HF `Gemma3TextConfig` (its defaults): Gemma 2's block with a Gemma RMSNorm (`1 + w`) over
    each query and key head before the rotary embedding, one RoPE per layer kind (`rope` for
    full-attention layers, global theta 1e6; `local_rope` for sliding ones, theta 1e4), sliding
    layers from `layer_types` (any pattern; absent, HF's from `sliding_window_pattern`, 6 by
    default: every sixth layer attends in full), the final logit soft-cap
    off by default (supported); no attention soft-cap (HF's Gemma 3 never applies one)."""

    vocab_size: int = 262_208
    max_position_embeddings: int = 131_072
    rope: Rope = Rope(rope_theta=GLOBAL_THETA)
    local_rope: Rope = Rope(rope_theta=LOCAL_THETA)
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None

    model_type = "gemma3_text"
    architecture = "Gemma3ForCausalLM"
    qk_norm = "head"
    # transformers' `Gemma3Attention` stores `attn_logit_softcapping` but never hands it to the
    # attention (eager or SDPA): a value in config.json is kept and written back, and, as in HF,
    # never applied. Ours stays None (`__post_init__` refuses another).
    hf_unread = (*Gemma2Config.hf_unread, "attn_logit_softcapping")
    runtime_fields = Gemma2Config.runtime_fields | {"attn_logit_softcapping"}

    def __post_init__(self):
        if self.attn_logit_softcapping is not None:
            raise ValueError(f"attn_logit_softcapping={self.attn_logit_softcapping!r}: HF's Gemma 3 never applies "
                             f"an attention soft-cap (Gemma3Attention does not pass it on); leave it None")
        super().__post_init__()

    def layer_kinds(self) -> tuple[str, ...]:
        if self.layer_types is not None:
            return self.layer_types
        return pattern_layer_types(self.num_hidden_layers, PATTERN)

    def rope_for(self, kind: str) -> Rope:
        return self.local_rope if kind == SLIDING else self.rope

    @classmethod
    def _own_fields(cls) -> tuple[str, ...]:
        return tuple(f for f in super()._own_fields() if f != "local_rope")

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> Gemma3Config:
        hf = dict(hf)
        cls.refuse(hf)
        # `sliding_window_pattern` (older files) only derives `layer_types`; HF never stores it.
        pattern = hf.pop("sliding_window_pattern", None)
        if pattern is not None and hf.get("layer_types") is None:
            layers = hf.get("num_hidden_layers", cls.num_hidden_layers)
            hf["layer_types"] = list(pattern_layer_types(layers, pattern))
        full, local = read_ropes(hf)
        config = super().from_hf_config({**hf, **full.to_hf()})
        return dataclasses.replace(config, rope=full, local_rope=local)

    def to_hf_config(self) -> dict[str, Any]:
        """transformers 5's form: `rope_parameters` keyed by layer type."""
        hf = super().to_hf_config()
        if hf["layer_types"] is not None:
            hf["layer_types"] = list(hf["layer_types"])
        hf["rope_parameters"] = {FULL: self.rope.to_hf()["rope_parameters"],
                                 SLIDING: self.local_rope.to_hf()["rope_parameters"]}
        return hf


# Multimodal `Gemma3Config` fields that concern only the vision tower, the projector and the
# image tokens: a text-only forward never reads them (dropped: saving writes the text model,
# a `gemma3_text` checkpoint).
VISION_FIELDS = frozenset({"vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
                           "image_token_index", "boi_token_id", "eoi_token_id", "image_token_id"})


def from_multimodal_config(hf: dict[str, Any]) -> Gemma3Config:
    """The text model of a `Gemma3ForConditionalGeneration` `config.json` (`model_type: gemma3`):
    its `text_config`, with the top-level `tie_word_embeddings` (HF ties the head by it).
    `Gemma3ForConditionalGeneration` never soft-caps its logits: a `final_logit_softcapping` in
    `text_config` (which `Gemma3ForCausalLM` would apply) is refused rather than changed."""
    text = dict(hf.get("text_config") or {})
    if "tie_word_embeddings" in hf:
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # published files state them at the top
        if hf.get(key) is not None and text.get(key) is None:
            text[key] = hf[key]
    if text.get("final_logit_softcapping") is not None:
        raise ValueError(f"text_config.final_logit_softcapping={text['final_logit_softcapping']!r}: HF's "
                         f"Gemma3ForConditionalGeneration does not apply it, Gemma3ForCausalLM would")
    unknown = sorted(set(hf) - VISION_FIELDS - {"text_config", "tie_word_embeddings", "model_type", "architectures",
                                                "initializer_range", "dtype", "torch_dtype", "transformers_version",
                                                "use_cache", "pad_token_id", "bos_token_id", "eos_token_id"})
    if unknown:
        raise ValueError(f"multimodal Gemma 3 config field(s) {unknown} are not understood by jimm's text model")
    config = Gemma3Config.from_hf_config({**text, "model_type": "gemma3_text"})

    return config
