"""HF `Olmo2ForCausalLM` <-> jimm `Olmo2` key table: Llama's names with OLMo 2's norms."""

from jimm_linen.models.llama import hf as llama_hf

NORMS = {"post_attention_norm": "post_attention_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}


def keymap(config):
    return llama_hf.keymap(config, NORMS)
