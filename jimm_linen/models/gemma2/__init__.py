from jimm_linen.models.gemma2 import hf
from jimm_linen.models.gemma2.config import Gemma2Config
from jimm_linen.models.gemma2.model import Gemma2, Gemma2Block
from jimm_linen.registry import SMALL_DECODER, decoder_family

__all__ = ["Gemma2", "Gemma2Block", "Gemma2Config"]

# Soft-caps small enough to change the output: attention 3.0 and 2.0, logits 15.0 (these random
# logits reach 80; at 5.0 the top ones would saturate into near-ties that one float32 ulp
# decides, and greedy tokens with them), one config without a logit cap. Windows (5, 4) shorter
# than the parity prompts (16 tokens), on alternating layers (3, as HF derives them when
# `layer_types` is not given) and on a given pattern. K < N and K = 1, head_dim other than hidden / N, and
# `query_pre_attn_scalar` other than head_dim; biases, tied and untied; `hidden_activation="gelu"`
# (the exact GELU: Gemma 2 takes it as written) beside a `hidden_act` it never reads.
PARITY = {
    "gemma2-gqa-headdim-softcaps-untied-window5": dict(
        SMALL_DECODER, num_hidden_layers=3, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        tie_word_embeddings=False,
        attn_logit_softcapping=3.0, final_logit_softcapping=15.0, sliding_window=5, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "gemma2-mqa-bias-tied-layer-types-window4": dict(
        SMALL_DECODER, num_hidden_layers=4, num_key_value_heads=1, head_dim=12, query_pre_attn_scalar=12,
        attention_bias=True, attn_logit_softcapping=2.0, final_logit_softcapping=None,
        sliding_window=4, layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        hidden_activation="gelu", hidden_act="silu", rms_norm_eps=2e-6,
        rope_parameters=dict(rope_type="default", rope_theta=100000.0)),
}
# Gemma-2-2B's width, heads, window and soft-caps, with 2 of its 26 layers (one sliding, one full),
# an untied head and 32768 of its 256000 tokens. Tied, the random embedding rows (N(0, 1), as
# `randomize_` makes them) give logits in the thousands that the real cap of 30 saturates into
# exact ties, which no greedy comparison can order; untied at the full vocabulary, the two heads
# of 590M parameters each outgrow this 24 GiB machine's memory over the references and both faces.
PARITY_FULL = {"gemma-2-2b-width-2layers": dict(
    vocab_size=32768, hidden_size=2304, intermediate_size=9216, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=False, rms_norm_eps=1e-6,
    max_position_embeddings=8192, rope_parameters=dict(rope_type="default", rope_theta=10000.0), bos_token_id=2,
    eos_token_id=1, pad_token_id=0)}

FAMILIES = (decoder_family("gemma2", Gemma2, Gemma2Config, hf.keymap, "Gemma2", PARITY, PARITY_FULL),)
