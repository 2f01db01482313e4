from jimm_linen.models.mixtral import hf
from jimm_linen.models.mixtral.config import MixtralConfig
from jimm_linen.models.mixtral.model import Mixtral, MixtralBlock
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Mixtral", "MixtralBlock", "MixtralConfig"]

# 8 experts top-2 (Mixtral's routing) under a 5-token window shorter than the parity prompts,
# with K < N; 4 experts top-3 with MQA, an explicit head_dim, a tied head and full attention
# (`sliding_window` None, HF's default).
PARITY = {
    "mixtral-gqa-window5-8experts-top2": dict(
        SMALL_DECODER, num_key_value_heads=2, intermediate_size=24, num_local_experts=8, num_experts_per_tok=2,
        sliding_window=5, rms_norm_eps=1e-5, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "mixtral-mqa-headdim-tied-4experts-top3": dict(
        SMALL_DECODER, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, num_local_experts=4,
        num_experts_per_tok=3, router_aux_loss_coef=0.02, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
}
# Mixtral-8x7B's width, heads and experts, with 1 of its 32 layers (8 experts of 4096 x 14336:
# 1.4B parameters in that layer).
PARITY_FULL = {"mixtral-8x7b-1layer": dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
    num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=32768, num_local_experts=8,
    num_experts_per_tok=2, router_aux_loss_coef=0.02, rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
    bos_token_id=1, eos_token_id=2)}

FAMILIES = (decoder_family("mixtral", Mixtral, MixtralConfig, hf.keymap, "Mixtral", PARITY, PARITY_FULL),)
