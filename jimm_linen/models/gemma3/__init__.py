from jimm_linen.models.gemma3 import hf
from jimm_linen.models.gemma3.config import Gemma3Config, from_multimodal_config
from jimm_linen.models.gemma3.model import Gemma3
from jimm_linen.registry import SMALL_DECODER, Family, decoder_family

__all__ = ["Gemma3", "Gemma3Config"]

S, F = "sliding_attention", "full_attention"
# Between them: layer_types that no `sliding_window_pattern` gives (a full layer between slides,
# two full layers in a row), windows (5, 4) shorter than the 16-token parity prompts, local and
# global thetas that differ with a linear scaling on the global one only (Gemma 3 4B+'s form),
# K < N and K = 1 with head_dim other than hidden / N, `query_pre_attn_scalar` other than head_dim,
# tied and untied, biases, and the final soft-cap (None in the published Gemma 3 files, but
# `Gemma3ForCausalLM` applies it: 15 changes these random logits, which reach 60). The attention
# soft-cap of 3.0 is in config.json only: HF's Gemma 3 never applies it (nor do we: kept, unread).
PARITY = {
    "gemma3-gqa-qknorm-linear-global-window5": dict(
        SMALL_DECODER, num_hidden_layers=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=5, layer_types=[S, F, S, S], rms_norm_eps=1e-6,
        rope_parameters={F: dict(rope_type="linear", rope_theta=100000.0, factor=4.0),
                         S: dict(rope_type="default", rope_theta=1000.0)}),
    "gemma3-mqa-bias-finalcap-untied-window4": dict(
        SMALL_DECODER, num_hidden_layers=4, num_key_value_heads=1, head_dim=12, query_pre_attn_scalar=12,
        attention_bias=True, tie_word_embeddings=False, attn_logit_softcapping=3.0, final_logit_softcapping=15.0,
        sliding_window=4, layer_types=[F, S, F, S], rms_norm_eps=2e-6,
        rope_parameters={F: dict(rope_type="default", rope_theta=50000.0),
                         S: dict(rope_type="default", rope_theta=500.0)}),
}
# Gemma-3-1B's width (4 query heads of 256 over hidden 1152, one key/value head, window 512,
# thetas 1e6 / 1e4, its 262144-token tied embedding), with 2 of its 26 layers (one sliding, one full).
PARITY_FULL = {"gemma-3-1b-width-2layers": dict(
    vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512, layer_types=[S, F],
    rms_norm_eps=1e-6, max_position_embeddings=32768,
    rope_parameters={F: dict(rope_type="default", rope_theta=1000000.0),
                     S: dict(rope_type="default", rope_theta=10000.0)},
    bos_token_id=2, eos_token_id=1, pad_token_id=0)}

# `Gemma3ForConditionalGeneration` checkpoints (`model_type: gemma3`): their text model loads as
# `Gemma3`, the vision tower and projector keys ignored by name. Never written (`owns`): a
# saved model is a `gemma3_text` checkpoint. Not a decoder family of its own (`text_part`).
MULTIMODAL = Family("gemma3", Gemma3, hf.multimodal_keymap, from_multimodal_config, owns=lambda config: False,
                    config_cls=Gemma3Config, text_part=True)

FAMILIES = (decoder_family("gemma3_text", Gemma3, Gemma3Config, hf.keymap, "Gemma3", PARITY, PARITY_FULL),
            MULTIMODAL)
