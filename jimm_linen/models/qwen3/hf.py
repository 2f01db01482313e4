"""HF `Qwen3ForCausalLM` <-> jimm `Qwen3` key table: Llama's names (q_norm / k_norm included)."""

from jimm_linen.models.llama.hf import keymap

__all__ = ["keymap"]
