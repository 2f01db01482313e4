"""HF `GemmaForCausalLM` <-> jimm `Gemma` key table: Llama's names."""

from jimm_linen.models.llama.hf import keymap

__all__ = ["keymap"]
