from jimm_linen.models.qwen3_moe import hf
from jimm_linen.models.qwen3_moe.config import Qwen3MoeConfig
from jimm_linen.models.qwen3_moe.model import Qwen3Moe, Qwen3MoeBlock, Qwen3MoeDenseBlock
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Qwen3Moe", "Qwen3MoeBlock", "Qwen3MoeConfig", "Qwen3MoeDenseBlock"]

# Every layer MoE (as Qwen3-30B-A3B), 8 experts top-2 renormalised, K < N with head_dim unlike
# hidden / N, biases; a dense layer between two MoE layers (`mlp_only_layers`), 6 experts top-2
# not renormalised (HF's default), MQA, a tied head and every layer sliding over a window shorter
# than the parity prompts.
PARITY = {
    "qwen3moe-gqa-headdim-bias-8experts-top2": dict(
        SMALL_DECODER, num_key_value_heads=2, head_dim=16, attention_bias=True, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=12, norm_topk_prob=True, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "qwen3moe-dense-layer-mqa-tied-window5": dict(
        SMALL_DECODER, num_hidden_layers=3, mlp_only_layers=[1], num_key_value_heads=1, num_experts=6,
        num_experts_per_tok=2, moe_intermediate_size=16, tie_word_embeddings=True, use_sliding_window=True,
        sliding_window=5, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
}
# Qwen3-30B-A3B's width, heads and experts (128 experts of 2048 x 768, top 8, renormalised), with
# 2 of its 48 layers.
PARITY_FULL = {"qwen3-30b-a3b-2layers": dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=2, num_attention_heads=32,
    num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=40960, num_experts=128,
    num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0), bos_token_id=151643, eos_token_id=151645)}

FAMILIES = (decoder_family("qwen3_moe", Qwen3Moe, Qwen3MoeConfig, hf.keymap, "Qwen3Moe", PARITY, PARITY_FULL),)
