from jimm_linen.models.llama import hf
from jimm_linen.models.llama.config import LlamaConfig
from jimm_linen.models.llama.model import Llama, LlamaBlock
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Llama", "LlamaBlock", "LlamaConfig"]

# Between them: K < N, K = N and K = 1 key/value heads; an explicit head_dim; the llama3,
# dynamic (inputs longer than max_position_embeddings, so it rescales) and linear rope types;
# tied and untied; both biases; unusual rms_norm_eps; two old-style config.json files
# (`rope_theta` + `rope_scaling`, spelled with `type` and with `rope_type`).
PARITY = {
    "llama-gqa-llama3-bias": dict(
        SMALL_DECODER, num_key_value_heads=2, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "llama-mqa-headdim-dynamic-tied": dict(
        SMALL_DECODER, num_key_value_heads=1, head_dim=12, tie_word_embeddings=True, rms_norm_eps=1e-4,
        max_position_embeddings=12, rope_theta=5000.0, rope_scaling={"type": "dynamic", "factor": 3.0}),
    "llama-mha-linear-3layers": dict(
        SMALL_DECODER, num_hidden_layers=3, num_key_value_heads=4, rms_norm_eps=3e-7, rope_theta=1000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.5}),
}
# Llama-3.2-1B's width and rope (llama3 scaling, factor 32), with 2 of its 16 layers.
PARITY_FULL = {"llama-3.2-1b-2layers": dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=32,
    num_key_value_heads=8, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
    bos_token_id=128000, eos_token_id=128001)}

FAMILIES = (decoder_family("llama", Llama, LlamaConfig, hf.keymap, "Llama", PARITY, PARITY_FULL),)
