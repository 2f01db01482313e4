from jimm_linen.models.olmo2 import hf
from jimm_linen.models.olmo2.config import Olmo2Config
from jimm_linen.models.olmo2.model import Olmo2, Olmo2Block
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Olmo2", "Olmo2Block", "Olmo2Config"]

# OLMo 2's default eos_token_id (50279) lies outside these small vocabularies: generate refuses it.
PARITY = {
    "olmo2-gqa-headdim-bias": dict(
        SMALL_DECODER, num_key_value_heads=2, head_dim=12, attention_bias=True, rms_norm_eps=3e-5, eos_token_id=95,
        rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
    "olmo2-mha-llama3-tied": dict(
        SMALL_DECODER, num_key_value_heads=4, tie_word_embeddings=True, rms_norm_eps=1e-6,
        max_position_embeddings=8192, eos_token_id=95,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=2048)),
}
# OLMo-2-0425-1B's width, with 2 of its 16 layers.
PARITY_FULL = {"olmo2-1b-2layers": dict(
    vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=16,
    num_key_value_heads=16, rms_norm_eps=1e-6, max_position_embeddings=4096,
    rope_parameters=dict(rope_type="default", rope_theta=500000.0), pad_token_id=100277, eos_token_id=100257)}

FAMILIES = (decoder_family("olmo2", Olmo2, Olmo2Config, hf.keymap, "Olmo2", PARITY, PARITY_FULL),)
