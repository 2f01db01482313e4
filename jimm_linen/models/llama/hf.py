"""HF `LlamaForCausalLM` <-> jimm `Llama` key table; Qwen3, Mistral and OLMo 2 store the same
names (OLMo 2 with its own norms)."""

from __future__ import annotations

from jimm_linen import checkpoint as ckpt

NORMS = {"pre_attention_norm": "input_layernorm", "pre_mlp_norm": "post_attention_layernorm"}


def keymap(config, norms: dict[str, str] = NORMS) -> ckpt.KeyMap:
    """`norms` maps each of the block's norm names to its HF module name. A tied head has no
    `lm_head.weight` (transformers drops it when saving); one stored anyway must hold the
    embedding's values (HF would untie it with a warning: we never guess)."""
    layer, block = "model.layers.{i}", "decoder/layers_{i}"
    attn = f"{block}/self_attention"
    rules = [
        ckpt.Rule("model.embed_tokens.weight", "token_embedder/embedding"),
        *(ckpt.Rule(f"{layer}.{hf}.weight", f"{block}/{ours}/scale") for ours, hf in norms.items()),
        *ckpt.linear(f"{layer}.self_attn.q_proj", f"{attn}/query", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.k_proj", f"{attn}/key", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.v_proj", f"{attn}/value", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.o_proj", f"{attn}/out", in_dims=2),
        ckpt.Rule(f"{layer}.self_attn.q_norm.weight", f"{attn}/query_norm/scale"),
        ckpt.Rule(f"{layer}.self_attn.k_norm.weight", f"{attn}/key_norm/scale"),
        *ckpt.linear(f"{layer}.mlp.gate_proj", f"{block}/mlp/wi_0"),
        *ckpt.linear(f"{layer}.mlp.up_proj", f"{block}/mlp/wi_1"),
        *ckpt.linear(f"{layer}.mlp.down_proj", f"{block}/mlp/wo"),
        ckpt.Rule("model.norm.weight", "decoder/decoder_norm/scale"),
        *ckpt.linear("lm_head", "logits_dense"),
    ]
    tied = {"lm_head.weight": "model.embed_tokens.weight"} if config.tie_word_embeddings else None
    return ckpt.KeyMap(rules, tied=tied)
