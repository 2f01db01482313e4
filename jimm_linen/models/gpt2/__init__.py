from jimm_linen.models.gpt2 import hf
from jimm_linen.models.gpt2.config import GPT2Config
from jimm_linen.models.gpt2.model import GPT2, GPT2Block
from jimm_linen.registry import decoder_family

__all__ = ["GPT2", "GPT2Block", "GPT2Config"]

# HF's GPT-2 names. Between them: the default block (gelu_new, n_inner None, tied); an explicit
# n_inner, relu, a large eps, no 1/sqrt(d) scale and an untied head; exact gelu, an odd head_dim
# (no rotary embedding to need an even one), per-layer 1/(i+1) scaling with HF's
# reorder_and_upcast_attn. n_positions leaves room for `jimm parity`'s 16 tokens + 8 generated
# (24: exactly). GPT-2's default token ids (50256) lie outside these vocabularies.
PARITY = {
    "gpt2-gelu_new-tied": dict(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=95, eos_token_id=95),
    "gpt2-relu-inner-unscaled-untied": dict(
        vocab_size=96, n_embd=48, n_layer=3, n_head=6, n_inner=40, activation_function="relu",
        layer_norm_epsilon=1e-3, scale_attn_weights=False, tie_word_embeddings=False, n_positions=24,
        bos_token_id=95, eos_token_id=95),
    "gpt2-inverse-layer-idx-odd-head-dim": dict(
        vocab_size=96, n_embd=36, n_layer=3, n_head=4, activation_function="gelu", layer_norm_epsilon=1e-6,
        scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, n_positions=64, bos_token_id=95,
        eos_token_id=95),
}
# GPT-2 124M's width, heads, vocabulary and positions, with 2 of its 12 layers.
PARITY_FULL = {"gpt2-124m-2layers": dict(vocab_size=50257, n_embd=768, n_layer=2, n_head=12, n_positions=1024)}

FAMILIES = (decoder_family("gpt2", GPT2, GPT2Config, hf.keymap, "GPT2", PARITY, PARITY_FULL),)
