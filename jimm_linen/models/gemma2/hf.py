"""HF `Gemma2ForCausalLM` <-> jimm `Gemma2` key table: Llama's names with Gemma 2's four norms
(HF's `post_attention_layernorm` follows attention here, where Llama's precedes the MLP)."""

from jimm_linen.models.llama import hf as llama_hf

NORMS = {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
         "pre_mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}


def keymap(config):
    return llama_hf.keymap(config, NORMS)
