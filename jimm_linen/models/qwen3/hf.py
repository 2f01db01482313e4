"""HF `Qwen3ForCausalLM` <-> jimm `Qwen3` key table (Llama's names, plus q_norm / k_norm)."""

from jimm_linen.models.causal_lm import hf_keymap
from jimm_linen.models.llama.hf import NORMS
from jimm_linen.models.qwen3.config import Qwen3Config


def keymap(config: Qwen3Config):
    return hf_keymap(config, NORMS)
