"""HF Transformers DINOv2 / DINOv3 <-> jimm: the key tables (hub / `save_pretrained` key names;
transformers 5's in-memory names are read-only aliases)."""

from __future__ import annotations

from jimm_linen.checkpoint import ConvKernel, DropLeading, KeyMap, Rule, encoder_rules, norm
from jimm_linen.models.dino.config import DINOv2Config, DINOv3Config

_LAYER_SCALE = dict(ls_0="layer_scale1.lambda1", ls_1="layer_scale2.lambda1")
_NORMS = dict(ln_0="norm1", ln_1="norm2")
_V5_ATTENTION = dict(q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj")
_V5_GATED = dict(gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj")

# Files keep DINOv2's original module names (the SwiGLU input projections fused as
# `weights_in`, gate first); transformers 5 renames them in memory and back on save.
DINOV2_LAYER = dict(**_NORMS, **_LAYER_SCALE, q="attention.attention.query", k="attention.attention.key",
                    v="attention.attention.value", o="attention.output.dense")
DINOV2_MLP = dict(fc1="mlp.fc1", fc2="mlp.fc2")
DINOV2_SWIGLU = dict(gate_up="mlp.weights_in", down="mlp.weights_out")

DINOV3_LAYER = dict(**_NORMS, **_LAYER_SCALE, **_V5_ATTENTION)
DINOV3_MLP = dict(fc1="mlp.up_proj", fc2="mlp.down_proj")

BLOCK = "Transformer/encoderblock_{i}"


def dinov2_keymap(config: DINOv2Config) -> KeyMap:
    mlp = DINOV2_SWIGLU if config.use_swiglu_ffn else DINOV2_MLP
    rules = [
        Rule("embeddings.cls_token", "cls"),
        Rule("embeddings.mask_token", "mask_token", DropLeading(1)),
        Rule("embeddings.register_tokens", "registers"),
        Rule("embeddings.position_embeddings", "pos_embedding"),
        Rule("embeddings.patch_embeddings.projection.weight", "embedding/kernel", ConvKernel()),
        Rule("embeddings.patch_embeddings.projection.bias", "embedding/bias"),
        *encoder_rules("encoder.layer.{i}", BLOCK, {**DINOV2_LAYER, **mlp}),
        *norm("layernorm", "Transformer/encoder_norm"),
    ]
    v5_mlp = _V5_GATED if config.use_swiglu_ffn else DINOV2_MLP
    aliases = encoder_rules("encoder.layer.{i}", BLOCK, {**DINOV2_LAYER, **_V5_ATTENTION, **v5_mlp})
    return KeyMap(rules, aliases=[a for a in aliases if a not in rules])


def dinov3_keymap(config: DINOv3Config) -> KeyMap:
    layer = {**DINOV3_LAYER, **(_V5_GATED if config.use_gated_mlp else DINOV3_MLP)}
    rules = [
        Rule("embeddings.cls_token", "cls"),
        Rule("embeddings.mask_token", "mask_token"),
        Rule("embeddings.register_tokens", "registers"),
        Rule("embeddings.patch_embeddings.weight", "embedding/kernel", ConvKernel()),
        Rule("embeddings.patch_embeddings.bias", "embedding/bias"),
        *encoder_rules("layer.{i}", BLOCK, layer),
        *norm("norm", "Transformer/encoder_norm"),
    ]
    # The module nests the layers under `model.`; checkpoints (and save_pretrained) do not.
    return KeyMap(rules, aliases=encoder_rules("model.layer.{i}", BLOCK, layer))
