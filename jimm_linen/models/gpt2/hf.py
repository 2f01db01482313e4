"""HF `GPT2LMHeadModel` <-> jimm `GPT2` key table. HF's `Conv1D` weights are `(in, out)`;
`c_attn` holds query, key and value side by side on its output axis. Read-only aliases: the
same keys without `transformer.` (checkpoints saved from a `GPT2Model`, as the original OpenAI
ones on the hub). Ignored: the causal-mask buffers `attn.bias` / `attn.masked_bias` that older
transformers saved with every layer."""

from __future__ import annotations

from jimm_linen import checkpoint as ckpt

PREFIX = "transformer."
# The buffers only, never a parameter's bias (`attn.c_attn.bias` has one more name part).
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",)


def keymap(config) -> ckpt.KeyMap:
    layer, block = f"{PREFIX}h.{{i}}", "decoder/layers_{i}"
    attn = f"{block}/self_attention"
    fused = [rule for part, name in enumerate(("query", "key", "value")) for rule in (
        ckpt.Rule(f"{layer}.attn.c_attn.weight", f"{attn}/{name}/kernel", ckpt.Fused(ckpt.Conv1DKernel(), part, 3, 1)),
        ckpt.Rule(f"{layer}.attn.c_attn.bias", f"{attn}/{name}/bias", ckpt.Fused(ckpt.FLATTEN, part, 3, 0)))]
    body = [
        ckpt.Rule(f"{PREFIX}wte.weight", "token_embedder/embedding"),
        ckpt.Rule(f"{PREFIX}wpe.weight", "position_embedder/embedding"),
        *ckpt.norm(f"{layer}.ln_1", f"{block}/pre_attention_norm"),
        *fused,
        ckpt.Rule(f"{layer}.attn.c_proj.weight", f"{attn}/out/kernel", ckpt.Conv1DKernel(in_dims=2)),
        ckpt.Rule(f"{layer}.attn.c_proj.bias", f"{attn}/out/bias"),
        *ckpt.norm(f"{layer}.ln_2", f"{block}/pre_mlp_norm"),
        ckpt.Rule(f"{layer}.mlp.c_fc.weight", f"{block}/mlp/Dense_0/kernel", ckpt.Conv1DKernel()),
        ckpt.Rule(f"{layer}.mlp.c_fc.bias", f"{block}/mlp/Dense_0/bias"),
        ckpt.Rule(f"{layer}.mlp.c_proj.weight", f"{block}/mlp/Dense_1/kernel", ckpt.Conv1DKernel()),
        ckpt.Rule(f"{layer}.mlp.c_proj.bias", f"{block}/mlp/Dense_1/bias"),
        *ckpt.norm(f"{PREFIX}ln_f", "decoder/decoder_norm"),
    ]
    if config.tie_word_embeddings:  # the head is `wte`: a stored lm_head.weight must hold its values
        head, tied = [], {"lm_head.weight": f"{PREFIX}wte.weight"}
    else:
        head, tied = [ckpt.Rule("lm_head.weight", "logits_dense/kernel", ckpt.LinearKernel())], None
    bare = [ckpt.Rule(r.hf.removeprefix(PREFIX), r.linen, r.transform) for r in body]
    return ckpt.KeyMap([*body, *head], aliases=bare, ignore=IGNORED, tied=tied)
