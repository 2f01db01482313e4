"""HF Transformers CLIP / SigLIP <-> jimm: the key tables (hub / `save_pretrained` names)."""

from __future__ import annotations

from jimm_linen.checkpoint import (
    FLATTEN, ConvKernel, DropLeading, Fused, KeyMap, LinearKernel, Rule, encoder_rules, linear, norm,
)

# CLIPEncoderLayer and SiglipEncoderLayer name their pieces the same way.
LAYER_NAMES = dict(ln_0="layer_norm1", ln_1="layer_norm2", q="self_attn.q_proj", k="self_attn.k_proj",
                   v="self_attn.v_proj", o="self_attn.out_proj", fc1="mlp.fc1", fc2="mlp.fc2")

# Buffers older `transformers` versions saved (not parameters; rebuilt by the model).
IGNORED = (r".*embeddings\.position_ids",)


def text_rules(hf: str, linen: str) -> list[Rule]:
    """`CLIPTextTransformer` / `SiglipTextTransformer` under HF prefix `hf` (e.g. "text_model.")."""
    return [
        Rule(f"{hf}embeddings.token_embedding.weight", f"{linen}Embed_0/embedding"),
        Rule(f"{hf}embeddings.position_embedding.weight", f"{linen}pos_embedding", DropLeading(1)),
        *encoder_rules(f"{hf}encoder.layers.{{i}}", f"{linen}Encoder_0/encoderblock_{{i}}", LAYER_NAMES),
        *norm(f"{hf}final_layer_norm", f"{linen}Encoder_0/encoder_norm"),
    ]


def vision_rules(hf: str, linen: str) -> list[Rule]:
    """The encoder stack and embeddings of a CLIP / SigLIP vision tower."""
    return [
        Rule(f"{hf}embeddings.patch_embedding.weight", f"{linen}embedding/kernel", ConvKernel()),
        Rule(f"{hf}embeddings.position_embedding.weight", f"{linen}pos_embedding", DropLeading(1)),
        *encoder_rules(f"{hf}encoder.layers.{{i}}", f"{linen}Transformer/encoderblock_{{i}}", LAYER_NAMES),
        *norm(f"{hf}post_layernorm", f"{linen}Transformer/encoder_norm"),
    ]


def map_head_rules(hf: str, linen: str) -> list[Rule]:
    """`SiglipMultiheadAttentionPoolingHead` (torch `nn.MultiheadAttention`: q, k, v fused in
    `in_proj_*`) <-> `jimm_linen.layers.MAPHead`."""
    attn = f"{linen}MultiHeadDotProductAttention_0"
    fused = [Rule(f"{hf}attention.in_proj_weight", f"{attn}/{name}/kernel", Fused(LinearKernel(1), i, 3))
             for i, name in enumerate(("query", "key", "value"))]
    fused += [Rule(f"{hf}attention.in_proj_bias", f"{attn}/{name}/bias", Fused(FLATTEN, i, 3))
              for i, name in enumerate(("query", "key", "value"))]
    return [
        Rule(f"{hf}probe", f"{linen}probe"),
        *fused,
        *linear(f"{hf}attention.out_proj", f"{attn}/out", in_dims=2),
        *norm(f"{hf}layernorm", f"{linen}LayerNorm_0"),
        *linear(f"{hf}mlp.fc1", f"{linen}MlpBlock_0/Dense_0"),
        *linear(f"{hf}mlp.fc2", f"{linen}MlpBlock_0/Dense_1"),
    ]


def clip_vision_rules(linen: str, hf: str = "vision_model.", projection: bool = True) -> list[Rule]:
    rules = [*vision_rules(hf, linen),
             Rule(f"{hf}embeddings.class_embedding", f"{linen}cls", DropLeading(2)),
             *norm(f"{hf}pre_layrnorm", f"{linen}pre_norm")]
    if projection:
        rules.append(Rule("visual_projection.weight", f"{linen}head/kernel", LinearKernel(1)))
    return rules


def clip_text_rules(linen: str, hf: str = "text_model.", projection: bool = True) -> list[Rule]:
    rules = text_rules(hf, linen)
    if projection:
        rules.append(Rule("text_projection.weight", f"{linen}head/kernel", LinearKernel(1)))
    return rules


def siglip_vision_rules(linen: str, hf: str = "vision_model.") -> list[Rule]:
    return [*vision_rules(hf, linen), Rule(f"{hf}embeddings.patch_embedding.bias", f"{linen}embedding/bias"),
            *map_head_rules(f"{hf}head.", f"{linen}MAPHead_0/")]


def siglip_text_rules(linen: str, hf: str = "text_model.") -> list[Rule]:
    return [*text_rules(hf, linen), *linear(f"{hf}head", f"{linen}head")]


def clip_keymap(config) -> KeyMap:
    return KeyMap([*clip_text_rules("txt/"), *clip_vision_rules("img/"),
                   Rule("logit_scale", "t", DropLeading(1))], ignore=IGNORED)


def siglip_keymap(config) -> KeyMap:
    return KeyMap([*siglip_text_rules("txt/"), *siglip_vision_rules("img/"),
                   Rule("logit_scale", "t"), Rule("logit_bias", "b")], ignore=IGNORED)


# --- single towers (HF's CLIPVisionModel[WithProjection], CLIPTextModel[WithProjection],
# SiglipVisionModel, SiglipTextModel). Without a projection HF saves the tower un-prefixed
# (`embeddings...`); with one, under `vision_model.` / `text_model.` beside the projection.

def clip_vision_keymap(config) -> KeyMap:
    projection = bool(config.num_labels)
    return KeyMap(clip_vision_rules("", "vision_model." if projection else "", projection), ignore=IGNORED)


def clip_text_keymap(config) -> KeyMap:
    projection = bool(config.projection_size)
    return KeyMap(clip_text_rules("", "text_model." if projection else "", projection), ignore=IGNORED)


def siglip_vision_keymap(config) -> KeyMap:
    return KeyMap(siglip_vision_rules("", ""), ignore=IGNORED)


def siglip_text_keymap(config) -> KeyMap:
    return KeyMap(siglip_text_rules("", ""), ignore=IGNORED)
