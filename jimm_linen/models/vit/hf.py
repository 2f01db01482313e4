"""HF Transformers ViT <-> jimm ViT: the key table (hub / `save_pretrained` key names)."""

from __future__ import annotations

import dataclasses

from jimm_linen.checkpoint import ConvKernel, KeyMap, Rule, encoder_rules, linear, norm
from jimm_linen.models.vit.config import ViTConfig

VIT_LAYER_NAMES = dict(
    ln_0="layernorm_before", ln_1="layernorm_after",
    q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
    o="attention.output.dense", fc1="intermediate.dense", fc2="output.dense",
)


# transformers 5 renames the modules in memory (and converts back when saving); a state dict
# taken from a live model, e.g. `torch.save(model.state_dict())`, uses these names.
VIT_LAYER_NAMES_V5 = dict(
    ln_0="layernorm_before", ln_1="layernorm_after",
    q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
    fc1="mlp.fc1", fc2="mlp.fc2",
)


def backbone_rules(p: str, layer_names: dict[str, str]) -> list[Rule]:
    """Everything but the classifier, with the backbone's keys prefixed by `p`."""
    return [
        Rule(f"{p}embeddings.cls_token", "cls"),
        Rule(f"{p}embeddings.position_embeddings", "pos_embedding"),
        Rule(f"{p}embeddings.patch_embeddings.projection.weight", "embedding/kernel", ConvKernel()),
        Rule(f"{p}embeddings.patch_embeddings.projection.bias", "embedding/bias"),
        *encoder_rules(f"{p}encoder.layer.{{i}}", "Transformer/encoderblock_{i}", layer_names),
        *norm(f"{p}layernorm", "Transformer/encoder_norm"),
        *linear(f"{p}pooler.dense", "pre_logits"),
    ]


def keymap(config: ViTConfig) -> KeyMap:
    """Written as HF writes this architecture: ViTForImageClassification nests the backbone
    under `vit.`, ViTModel does not. Read with either spelling (a classifier fine-tuned from a
    ViTModel backbone, or a backbone taken from a classifier), and with transformers 5's
    in-memory module names."""
    p, other = ("vit.", "") if config.num_labels else ("", "vit.")
    aliases = [*backbone_rules(other, VIT_LAYER_NAMES)]
    for prefix in (p, other):
        aliases += encoder_rules(f"{prefix}layers.{{i}}", "Transformer/encoderblock_{i}", VIT_LAYER_NAMES_V5)
    return KeyMap([*backbone_rules(p, VIT_LAYER_NAMES), *linear("classifier", "head")], aliases=aliases)


def adapt_config(config: ViTConfig, keys) -> ViTConfig:
    """What config.json cannot say: HF's ViTModel may be saved without its pooler
    (`add_pooling_layer=False`); the checkpoint's keys tell."""
    if config.pooler and not any(k.endswith("pooler.dense.weight") for k in keys):
        return dataclasses.replace(config, pooler=False)
    return config
