"""HF `Gemma3ForCausalLM` <-> jimm `Gemma3` key table (Gemma 2's, whose Llama rules include the
q/k norms), and the text part of `Gemma3ForConditionalGeneration` checkpoints."""

from __future__ import annotations

import dataclasses

from jimm_linen import checkpoint as ckpt
from jimm_linen.models.gemma2 import hf as gemma2_hf

keymap = gemma2_hf.keymap

# The text model's prefix in `Gemma3ForConditionalGeneration` files: transformers 5's module
# names `model.language_model.*` and `lm_head.weight`, which some files store, and the names
# transformers 4 and 5.25 save, `language_model.model.*` and `language_model.lm_head.weight`
# (read as aliases: we never write a multimodal checkpoint).
PREFIXES = {"model.": ("model.language_model.", "language_model.model."),
            "lm_head.": ("lm_head.", "language_model.lm_head.")}
# The vision tower and the projector, beside the text model in either layout: a text-only
# forward never reads them.
VISION_KEYS = (r"(model\.)?vision_tower\..*", r"(model\.)?multi_modal_projector\..*")


def _moved(rule: ckpt.Rule, which: int) -> ckpt.Rule:
    for old, new in PREFIXES.items():
        if rule.hf.startswith(old):
            return dataclasses.replace(rule, hf=new[which] + rule.hf[len(old):])
    raise ValueError(f"no multimodal prefix for {rule.hf}")


def multimodal_keymap(config) -> ckpt.KeyMap:
    text = keymap(config)
    rules = [_moved(r, 0) for r in text.rules]
    aliases = [_moved(r, 1) for r in (*text.rules, *text.aliases)]
    tied = None
    if config.tie_word_embeddings:
        tied = {"lm_head.weight": "model.language_model.embed_tokens.weight",
                "language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
    return ckpt.KeyMap(rules, aliases, ignore=VISION_KEYS, tied=tied)
