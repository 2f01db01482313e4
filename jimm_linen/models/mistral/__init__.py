from jimm_linen.models.mistral import hf
from jimm_linen.models.mistral.config import MistralConfig
from jimm_linen.models.mistral.model import Mistral
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Mistral", "MistralConfig"]

# Every layer slides over a window (5, 7) shorter than the parity prompts (16 tokens), with K < N
# and with K = 1; Mistral Nemo's shape (an explicit head_dim, heads * head_dim != hidden) with a
# tied head; full attention (`sliding_window=None`, as Nemo). HF's Mistral has no biases.
PARITY = {
    "mistral-gqa-window5": dict(
        SMALL_DECODER, num_key_value_heads=2, sliding_window=5, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "mistral-nemo-like-mqa-headdim-tied-window7": dict(
        SMALL_DECODER, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, sliding_window=7,
        max_position_embeddings=1024000, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "mistral-full-attention": dict(
        SMALL_DECODER, num_key_value_heads=4, sliding_window=None, rms_norm_eps=3e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
}
# Mistral-7B-v0.1's width, heads and window, with 2 of its 32 layers.
PARITY_FULL = {"mistral-7b-v0.1-2layers": dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2, num_attention_heads=32,
    num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=32768, sliding_window=4096,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0), bos_token_id=1, eos_token_id=2)}

FAMILIES = (decoder_family("mistral", Mistral, MistralConfig, hf.keymap, "Mistral", PARITY, PARITY_FULL),)
