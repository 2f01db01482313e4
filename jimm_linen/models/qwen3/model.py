"""Qwen3 (dense): Llama's block; its config adds the per-head q/k RMSNorm (`qk_norm="head"`)
and the sliding-window layers."""

from __future__ import annotations

from jimm_linen.models.decoder import CausalLM
from jimm_linen.models.llama.model import LlamaBlock
from jimm_linen.models.qwen3.config import Qwen3Config


class Qwen3(CausalLM):
    config: Qwen3Config
    block = LlamaBlock
