from jimm_linen.models.qwen3 import hf
from jimm_linen.models.qwen3.config import Qwen3Config
from jimm_linen.models.qwen3.model import Qwen3
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Qwen3", "Qwen3Config"]

# yarn and default rope; K = 1 with head_dim unlike hidden/N; biases; tied; and sliding-window
# layers in a pattern that is not periodic, the window shorter than the parity prompts.
PARITY = {
    "qwen3-mqa-headdim-yarn-bias-tied": dict(
        SMALL_DECODER, num_key_value_heads=1, head_dim=16, attention_bias=True, tie_word_embeddings=True,
        rms_norm_eps=1e-6, max_position_embeddings=16384,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=4096)),
    "qwen3-gqa-default": dict(
        SMALL_DECODER, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8, rms_norm_eps=2e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "qwen3-sliding-layer-types": dict(
        SMALL_DECODER, num_hidden_layers=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=5,
        layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
}
# Qwen3-0.6B's width and heads (16 query heads of 128 over hidden 1024, 8 key/value heads, tied),
# with 2 of its 28 layers.
PARITY_FULL = {"qwen3-0.6b-2layers": dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960,
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0), bos_token_id=151643, eos_token_id=151645)}

FAMILIES = (decoder_family("qwen3", Qwen3, Qwen3Config, hf.keymap, "Qwen3", PARITY, PARITY_FULL),)
