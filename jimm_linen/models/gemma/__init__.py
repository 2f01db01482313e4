from jimm_linen.models.gemma import hf
from jimm_linen.models.gemma.config import GemmaConfig
from jimm_linen.models.gemma.model import Gemma, embed_scale
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Gemma", "GemmaConfig", "embed_scale"]

# Between them: K = 1 and K < N key/value heads, each with a head_dim other than hidden / N;
# tied (Gemma's default) and untied; attention biases; a `hidden_activation` that HF's Gemma
# never reads (kept, the MLP's GELU is `hidden_act`'s); linear rope.
PARITY = {
    "gemma-mqa-headdim-tied": dict(
        SMALL_DECODER, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "gemma-gqa-headdim-bias-untied-linear": dict(
        SMALL_DECODER, num_key_value_heads=2, head_dim=12, attention_bias=True, tie_word_embeddings=False,
        hidden_activation="silu", rms_norm_eps=3e-6,
        rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0)),
}
# Gemma-2B's width (8 query heads of 256 over hidden 2048, one key/value head), with 2 of its 18 layers.
PARITY_FULL = {"gemma-2b-2layers": dict(
    vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, max_position_embeddings=8192,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0), bos_token_id=2, eos_token_id=1, pad_token_id=0)}

FAMILIES = (decoder_family("gemma", Gemma, GemmaConfig, hf.keymap, "Gemma", PARITY, PARITY_FULL),)
