"""Vision Transformer configuration: HF `config.json` round trip and big_vision variant strings."""

from __future__ import annotations

import dataclasses
from typing import Any


from jimm_linen.activations import get_activation
from jimm_linen.config_utils import ImageGrid, check_fields, check_heads, labels_from_hf, labels_to_hf

# big_vision's width / depth / mlp / heads table (big_vision/models/vit.py::decode_variant).
VARIANTS: dict[str, dict[str, int]] = {
    "mu": dict(hidden_size=32, num_hidden_layers=1, intermediate_size=128, num_attention_heads=2),
    "Ti": dict(hidden_size=192, num_hidden_layers=12, intermediate_size=768, num_attention_heads=3),
    "S": dict(hidden_size=384, num_hidden_layers=12, intermediate_size=1536, num_attention_heads=6),
    "M": dict(hidden_size=512, num_hidden_layers=12, intermediate_size=2048, num_attention_heads=8),
    "B": dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_attention_heads=12),
    "L": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, num_attention_heads=16),
    "So400m": dict(hidden_size=1152, num_hidden_layers=27, intermediate_size=4304, num_attention_heads=16),
    "H": dict(hidden_size=1280, num_hidden_layers=32, intermediate_size=5120, num_attention_heads=16),
    "g": dict(hidden_size=1408, num_hidden_layers=40, intermediate_size=6144, num_attention_heads=16),
    "G": dict(hidden_size=1664, num_hidden_layers=48, intermediate_size=8192, num_attention_heads=16),
    "e": dict(hidden_size=1792, num_hidden_layers=56, intermediate_size=15360, num_attention_heads=16),
}

POOLINGS = ("cls", "map", "mean")

_HF_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
    "image_size", "patch_size", "num_channels", "qkv_bias", "encoder_stride",
    "pooler_output_size", "pooler_act",
)


@dataclasses.dataclass(frozen=True)
class ViTConfig(ImageGrid):
    """Architecture of a ViT. Field names follow HF's `ViTConfig`.

    `pooling`: "cls" (class token, HF ViT), "map" (attention pooling, SigLIP) or "mean".
    `num_labels`: size of the classifier `head`; 0 means no head (features out).
    `pooler`: HF `ViTModel`'s pooler / big_vision's `pre_logits`: Dense(pooler_output_size) + pooler_act.
    `pre_norm`, `patch_bias`, `head_bias`: the CLIP vision tower's differences (a LayerNorm
    before the encoder, a patch convolution without bias, a projection `head` without bias).
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    pooling: str = "cls"
    num_labels: int = 0
    id2label: tuple[str, ...] | None = None
    pooler: bool = False
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    encoder_stride: int = 16  # used only by HF's masked-image-modeling head; kept for the round trip
    pre_norm: bool = False
    patch_bias: bool = True
    head_bias: bool = True

    causal = False  # image tokens attend to each other both ways (the encoder blocks read this)

    def __post_init__(self):
        if self.pooler_output_size is None:
            object.__setattr__(self, "pooler_output_size", self.hidden_size)
        check_heads(self, "image")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use one of {POOLINGS}")
        if self.id2label is not None and len(self.id2label) != self.num_labels:
            raise ValueError(f"id2label has {len(self.id2label)} labels, num_labels is {self.num_labels}")
        get_activation(self.hidden_act)
        get_activation(self.pooler_act)

    @property
    def num_positions(self) -> int:
        return self.grid_size ** 2 + (1 if self.pooling == "cls" else 0)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "ViTConfig":
        """big_vision-style "B/16", "So400m/14": sizes from the variant, the rest from `overrides`."""
        name, _, patch = variant.partition("/")
        if name not in VARIANTS or not patch.isdigit():
            raise ValueError(f"unknown ViT variant {variant!r}; expected '<size>/<patch>' with size in {list(VARIANTS)}")
        return cls(**{**VARIANTS[name], "patch_size": int(patch), **overrides})

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], *, pooler: bool | None = None) -> "ViTConfig":
        """Read an HF ViT `config.json` dict. `architectures` decides whether there is a
        classifier head (`ViTForImageClassification`); a dict without it (a config written by
        hand) has one when it says `num_labels` or `id2label`, as HF's classifier would.
        `pooler`: whether HF `ViTModel`'s pooler is present (default: for `ViTModel` checkpoints)."""
        model_type = hf.get("model_type", "vit")
        if model_type != "vit":
            raise ValueError(f"ViTConfig reads model_type 'vit', got {model_type!r}")
        check_fields(hf, set(_HF_FIELDS), model_type)
        labelled = hf.get("num_labels") is not None or bool(hf.get("id2label"))
        archs = hf.get("architectures") or ["ViTForImageClassification" if labelled else "ViTModel"]
        classifier = "ViTForImageClassification" in archs
        if not classifier and "ViTModel" not in archs:
            raise ValueError(f"unsupported ViT architectures {archs}; jimm reads ViTModel and ViTForImageClassification")
        kwargs = {k: hf[k] for k in _HF_FIELDS if k in hf}
        num_labels = 0
        if classifier:
            num_labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
        return cls(**kwargs, num_labels=num_labels, id2label=labels_from_hf(hf) if classifier else None,
                   pooler=(not classifier) if pooler is None else pooler)

    def to_hf_config(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.ViTConfig` reads back to this architecture."""
        if self.pooling != "cls":
            raise ValueError(f"HF ViT has only class-token pooling; this config uses {self.pooling!r}")
        if self.pre_norm or not self.patch_bias or not self.head_bias:
            raise ValueError("HF ViT has no pre-encoder LayerNorm and biases on the patch embedding "
                             "and classifier; this config is a CLIP-style tower")
        if self.pooler and self.num_labels:
            raise ValueError("HF ViTForImageClassification has no pooler; use pooler=False with a head")
        hf = {k: getattr(self, k) for k in _HF_FIELDS}
        hf["model_type"] = "vit"
        hf["architectures"] = ["ViTForImageClassification" if self.num_labels else "ViTModel"]
        hf.update(labels_to_hf(self.id2label, self.num_labels or 2))
        return hf
