"""HF `Olmo2ForCausalLM` <-> jimm `Olmo2` key table."""

from jimm_linen.models.causal_lm import hf_keymap
from jimm_linen.models.olmo2.config import Olmo2Config

NORMS = {"post_attention_norm": "post_attention_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}


def keymap(config: Olmo2Config):
    return hf_keymap(config, NORMS)
