"""HF `MistralForCausalLM` <-> jimm `Mistral` key table: Llama's names (no biases stored)."""

from jimm_linen.models.llama.hf import keymap

__all__ = ["keymap"]
