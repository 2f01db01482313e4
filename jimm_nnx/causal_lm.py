"""Decoder LMs with the `jimm` NNX surface: `CausalLM.from_pretrained(path)` picks the family
from `config.json`; each registered family gets its own class (`Llama`, `Qwen3`, `Olmo2`, ...,
built from `jimm_linen.registry`). The model math is `jimm_linen`'s (through `bridge`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

import bridge
from jimm_linen import generation
from jimm_linen.layers.kv_cache import KVCache
from jimm_linen.models import decoder as linen_lm
from jimm_linen.outputs import GenerationOutput
from jimm_linen.registry import decoders
from jimm_nnx.models import PretrainedModel, RngsArg


class CausalLM(PretrainedModel):
    """Any decoder family of `jimm_linen` as an `nnx.Module`: `lm(input_ids, attention_mask)`
    gives float32 logits `[B, T, V]` (compiled even when called eagerly)."""

    linen_cls = linen_lm.CausalLM
    config_cls = linen_lm.CausalLMConfig
    model_type = "causal_lm"
    # jimm has no decoders, so no jimm sharding class: our FSDP rule preset on the current mesh.
    default_sharding = "fsdp"

    @classmethod
    def _module_cls(cls, config) -> type:
        return next(f.module_cls for f in decoders().values() if type(config) is f.config_cls)

    @classmethod
    def _from_hf(cls, hf: dict[str, Any]):
        model_type = hf.get("model_type")
        family = decoders().get(model_type)
        if family is None or not cls._serves(family.config_cls):
            known = sorted(k for k, f in decoders().items() if cls._serves(f.config_cls))
            raise ValueError(f"model_type {model_type!r} is not a {cls.__name__} family; supported: {known}")
        return family.from_hf(hf)

    @classmethod
    def _serves(cls, config_cls: type) -> bool:
        """The base class runs every decoder family; a family's class the configs whose nearest
        registered class is its own (not Gemma 2's, whose config subclasses Gemma's)."""
        registered = {f.config_cls for f in decoders().values()}
        nearest = next((c for c in config_cls.__mro__ if c in registered), None)
        return cls.config_cls is linen_lm.CausalLMConfig or nearest is cls.config_cls

    @classmethod
    def _accepts(cls, config) -> bool:
        return isinstance(config, cls.config_cls) and cls._serves(type(config))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, positions=None,
                 cache: KVCache | None = None, train: bool = False, return_hidden_states: bool = False,
                 output_router_logits: bool = False, rngs: RngsArg = None):
        """Logits, `(logits, cache)` with a `cache`, or a `jimm_linen.CausalLMOutput` with
        `return_hidden_states=True` or (mixture-of-experts families) `output_router_logits=True`."""
        linen_lm.check_token_ids(input_ids, self.config.vocab_size)  # the compiled call cannot check values
        return self._run(input_ids, attention_mask, positions, cache, train=train, rngs=rngs,
                         return_hidden_states=return_hidden_states, output_router_logits=output_router_logits)

    def init_cache(self, batch: int, length: int, dtype: Any = None) -> KVCache:
        return self.linen_module.init_cache(batch, length, dtype)

    def generate(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, max_new_tokens: int,
                 **settings: Any) -> GenerationOutput:
        """`jimm_linen.generate` on this model's parameters: the same keywords (`do_sample`,
        `temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`, `eos_token_id`,
        `pad_token_id`, `rng`), the same output, the same compiled program."""
        return generation.generate(self.linen_module, bridge.to_linen_variables(self), input_ids, attention_mask,
                                   max_new_tokens=max_new_tokens, **settings)

    def stream(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, max_new_tokens: int,
               **settings: Any) -> Iterator[np.ndarray]:
        """`jimm_linen.generation.stream` on this model: each step's new tokens `[B]` as they come."""
        return generation.stream(self.linen_module, bridge.to_linen_variables(self), input_ids, attention_mask,
                                 max_new_tokens=max_new_tokens, **settings)


def _family_class(family) -> type:
    return type(family.nnx_name, (CausalLM,), dict(
        linen_cls=family.module_cls, config_cls=family.config_cls, model_type=family.model_type,
        __module__=__name__, __doc__=f"{family.config_cls.architecture} as an `nnx.Module` (see `CausalLM`)."))


# One class per registered decoder family.
FAMILY_CLASSES: dict[str, type] = {f.model_type: _family_class(f) for f in decoders().values()}
globals().update({cls.__name__: cls for cls in FAMILY_CLASSES.values()})
__all__ = ["CausalLM", "FAMILY_CLASSES", *(cls.__name__ for cls in FAMILY_CLASSES.values())]
