"""HF `LlamaForCausalLM` <-> jimm `Llama` key table."""

from jimm_linen.models.causal_lm import hf_keymap
from jimm_linen.models.llama.config import LlamaConfig

NORMS = {"pre_attention_norm": "input_layernorm", "pre_mlp_norm": "post_attention_layernorm"}


def keymap(config: LlamaConfig):
    return hf_keymap(config, NORMS)
