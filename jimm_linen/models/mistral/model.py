"""Mistral: Llama's block; its config slides every layer's attention over `sliding_window`."""

from __future__ import annotations

from jimm_linen.models.decoder import CausalLM
from jimm_linen.models.llama.model import LlamaBlock
from jimm_linen.models.mistral.config import MistralConfig


class Mistral(CausalLM):
    config: MistralConfig
    block = LlamaBlock
