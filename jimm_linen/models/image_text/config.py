"""CLIP and SigLIP configurations: HF `config.json` round trip and big_vision variant strings.

The image tower is a `ViTConfig` and the text tower a `TextConfig`; `CLIPConfig` and
`SigLIPConfig` set the structure each family fixes (pooling, masks, projections, biases), so a
tower config only has to say its sizes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from jimm_linen.activations import get_activation
from jimm_linen.config_utils import check_fields, check_heads
from jimm_linen.models.vit.config import VARIANTS, ViTConfig

TEXT_POOLINGS = ("eos", "last")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A CLIP-style text transformer. Field names follow HF's `CLIPTextConfig` / `SiglipTextConfig`;
    the defaults are OpenAI CLIP's text tower."""

    vocab_size: int = 49408
    hidden_size: int = 512
    """Width of every token (HF `hidden_size`); also the pooled feature size."""
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    """The length of the learned position table: the longest text the tower takes."""
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    """Where "eos" pooling reads (the largest id instead when this is 2, as HF does for old CLIP configs)."""
    causal: bool = True
    """Mask future tokens (CLIP) or not (SigLIP)."""
    pooling: str = "eos"
    """"eos": the first `eos_token_id` position; "last": the last position."""
    projection_size: int = 0
    """Width of the `head` Dense after pooling (0: no head)."""
    head_bias: bool = True
    """Whether the head has a bias (SigLIP) or not (CLIP's projection)."""

    # What the shared encoder blocks read that HF's text configs do not vary.
    qkv_bias = True
    hidden_dropout_prob = 0.0

    @property
    def attention_probs_dropout_prob(self) -> float:
        return self.attention_dropout

    def __post_init__(self):
        check_heads(self, "text")
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"unknown text pooling {self.pooling!r}; use one of {TEXT_POOLINGS}")
        if self.pooling == "eos" and self.eos_token_id is None:
            raise ValueError("pooling='eos' needs an eos_token_id")
        get_activation(self.hidden_act)

    def dummy_inputs(self) -> tuple:
        """Example inputs for `init` (and abstract inits): one text of the full length."""
        return (jnp.zeros((1, self.max_position_embeddings), jnp.int32),)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "TextConfig":
        """big_vision text tower sizes ("B", "M", "So400m", ...); the rest from `overrides`."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown text variant {variant!r}; expected one of {list(VARIANTS)}")
        return cls(**{**VARIANTS[variant], **overrides})


# HF tower fields and how they map onto ours (HF name -> our field).
_TEXT_FIELDS = {k: k for k in (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "attention_dropout",
    "pad_token_id", "bos_token_id", "eos_token_id")}
_VISION_FIELDS = {k: k for k in (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
    "patch_size", "num_channels", "hidden_act", "layer_norm_eps")}
_VISION_FIELDS["attention_dropout"] = "attention_probs_dropout_prob"


def _read(hf: dict[str, Any], fields: dict[str, str], extra: set[str], model_type: str) -> dict[str, Any]:
    got = hf.get("model_type", model_type)
    if got != model_type:
        raise ValueError(f"expected a {model_type!r} tower config, got model_type {got!r}")
    check_fields(hf, set(fields) | extra | {"initializer_factor"}, model_type)
    return {ours: hf[theirs] for theirs, ours in fields.items() if theirs in hf}


def _write(cfg, fields: dict[str, str], model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, **{theirs: getattr(cfg, ours) for theirs, ours in fields.items()}}


def _factor(hf: dict[str, Any]) -> float:
    factors = {hf.get("initializer_factor", 1.0)}
    factors |= {hf[t].get("initializer_factor", 1.0) for t in ("text_config", "vision_config") if t in hf}
    if len(factors) != 1:
        raise ValueError(f"different initializer_factor per tower {sorted(factors)} is not supported")
    return factors.pop()


def _towers(hf: dict[str, Any], model_type: str) -> tuple[dict, dict]:
    got = hf.get("model_type")
    if got != model_type:
        raise ValueError(f"expected model_type {model_type!r}, got {got!r}")
    return hf.get("text_config") or {}, hf.get("vision_config") or {}


def _default(cls, field: str):
    """A family's default tower config: what HF assumes for fields a config.json leaves out."""
    return cls.__dataclass_fields__[field].default


def _vision(cls, fields: dict[str, Any]) -> ViTConfig:
    # pooler_output_size=None: it follows hidden_size (unused, the towers have no pooler, but a
    # stale default would make equal configs compare unequal).
    return dataclasses.replace(_default(cls, "vision"), **fields, pooler_output_size=None)


_CLIP_TEXT_FIELDS = {**_TEXT_FIELDS, "initializer_range": "initializer_range"}
_CLIP_VISION_FIELDS = {**_VISION_FIELDS, "initializer_range": "initializer_range"}


def _image_and_text(config) -> tuple:
    """Example inputs for `init` of a two-tower model: an image, then a text."""
    return (*config.vision.dummy_inputs(), *config.text.dummy_inputs())


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """OpenAI CLIP. The towers get CLIP's structure here: class-token pooling with a
    LayerNorm before the encoder and a bias-free patch embedding for images, a causal text
    encoder pooled at EOS, and bias-free projections to `projection_dim` (each tower's `head`).

    `text_projection_dim` / `vision_projection_dim` are the towers' own HF `projection_dim`
    fields (used by HF's `CLIP*ModelWithProjection`), kept for the round trip.
    """

    text: TextConfig = TextConfig()
    vision: ViTConfig = ViTConfig(hidden_size=768, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0
    text_projection_dim: int | None = None
    vision_projection_dim: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "text", dataclasses.replace(
            self.text, causal=True, pooling="eos", projection_size=self.projection_dim, head_bias=False))
        object.__setattr__(self, "vision", dataclasses.replace(
            self.vision, pooling="cls", pre_norm=True, patch_bias=False, qkv_bias=True, pooler=False,
            num_labels=self.projection_dim, id2label=None, head_bias=False))
        for f in ("text_projection_dim", "vision_projection_dim"):
            if getattr(self, f) is None:
                object.__setattr__(self, f, self.projection_dim)

    logit_bias = False
    dummy_inputs = _image_and_text

    @property
    def logit_scale_init(self) -> float:
        return self.logit_scale_init_value

    @classmethod
    def from_variants(cls, image: str = "B/32", text: str = "M", *, image_size: int = 224,
                      vocab_size: int = 49408, max_position_embeddings: int = 77,
                      projection_dim: int = 512, **text_overrides: Any) -> "CLIPConfig":
        """Towers from big_vision variant strings: CLIP ViT-B/32 is `("B/32", "M")`."""
        common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)
        return cls(text=TextConfig.from_variant(text, vocab_size=vocab_size, **common,
                                                max_position_embeddings=max_position_embeddings, **text_overrides),
                   vision=ViTConfig.from_variant(image, image_size=image_size, **common),
                   projection_dim=projection_dim)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "CLIPConfig":
        text, vision = _towers(hf, "clip")
        check_fields(hf, {"text_config", "vision_config", "projection_dim", "logit_scale_init_value",
                          "initializer_factor"}, "clip")
        archs = hf.get("architectures") or ["CLIPModel"]
        if archs != ["CLIPModel"]:
            raise ValueError(f"unsupported CLIP architectures {archs}; jimm reads CLIPModel")
        t = _read(text, _CLIP_TEXT_FIELDS, {"projection_dim"}, "clip_text_model")
        v = _read(vision, _CLIP_VISION_FIELDS, {"projection_dim"}, "clip_vision_model")
        projection_dim = hf.get("projection_dim", 512)
        return cls(text=dataclasses.replace(_default(cls, "text"), **t),
                   vision=_vision(cls, v), projection_dim=projection_dim,
                   logit_scale_init_value=hf.get("logit_scale_init_value", 2.6592),
                   initializer_factor=_factor(hf),
                   text_projection_dim=text.get("projection_dim", projection_dim),
                   vision_projection_dim=vision.get("projection_dim", projection_dim))

    def to_hf_config(self) -> dict[str, Any]:
        text = _write(self.text, _CLIP_TEXT_FIELDS, "clip_text_model")
        vision = _write(self.vision, _CLIP_VISION_FIELDS, "clip_vision_model")
        text.update(projection_dim=self.text_projection_dim, initializer_factor=self.initializer_factor)
        vision.update(projection_dim=self.vision_projection_dim, initializer_factor=self.initializer_factor)
        return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value,
                "initializer_factor": self.initializer_factor, "text_config": text, "vision_config": vision}


@dataclasses.dataclass(frozen=True)
class SigLIPConfig:
    """SigLIP. The towers get SigLIP's structure here: attention pooling (MAP head) over the
    image tokens with no projection, a bidirectional text encoder pooled at the last position
    followed by a `head` Dense (with bias) to `text.projection_size`, which must equal the
    image width. `logit_scale_init` / `logit_bias_init` are big_vision's (log 10, -10).
    """

    text: TextConfig = TextConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072,
                                  num_attention_heads=12, max_position_embeddings=64,
                                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    vision: ViTConfig = ViTConfig(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    initializer_factor: float = 1.0
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float = -10.0

    logit_bias = True
    dummy_inputs = _image_and_text

    def __post_init__(self):
        projection = self.text.projection_size or self.text.hidden_size
        if projection != self.vision.hidden_size:
            raise ValueError(f"SigLIP compares text embeddings of size {projection} (text projection_size) "
                             f"with image embeddings of size {self.vision.hidden_size}; they must be equal")
        object.__setattr__(self, "text", dataclasses.replace(
            self.text, causal=False, pooling="last", projection_size=projection, head_bias=True))
        object.__setattr__(self, "vision", dataclasses.replace(
            self.vision, pooling="map", pre_norm=False, patch_bias=True, qkv_bias=True, pooler=False,
            num_labels=0, id2label=None))

    @classmethod
    def from_variants(cls, image: str = "B/16", text: str | None = None, *, image_size: int = 224,
                      vocab_size: int = 32000, max_position_embeddings: int = 64,
                      **text_overrides: Any) -> "SigLIPConfig":
        """Towers from big_vision variant strings (the text tower defaults to the image's
        size): SigLIP base/16 at 224px is `("B/16",)`."""
        text = text or image.partition("/")[0]
        common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
        return cls(text=TextConfig.from_variant(text, vocab_size=vocab_size, **common,
                                                max_position_embeddings=max_position_embeddings, **text_overrides),
                   vision=ViTConfig.from_variant(image, image_size=image_size, **common))

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "SigLIPConfig":
        text, vision = _towers(hf, "siglip")
        check_fields(hf, {"text_config", "vision_config", "initializer_factor"}, "siglip")
        archs = hf.get("architectures") or ["SiglipModel"]
        if archs != ["SiglipModel"]:
            raise ValueError(f"unsupported SigLIP architectures {archs}; jimm reads SiglipModel")
        t = _read(text, _TEXT_FIELDS, {"projection_size"}, "siglip_text_model")
        v = _read(vision, _VISION_FIELDS, {"vision_use_head"}, "siglip_vision_model")
        if not vision.get("vision_use_head", True):
            raise ValueError("vision_use_head=False: a SigLIP vision tower without its attention-pooling "
                             "head has no image embedding; jimm reads SigLIP with the head")
        text_cfg = dataclasses.replace(_default(cls, "text"), **t)
        text_cfg = dataclasses.replace(text_cfg, projection_size=text.get("projection_size", text_cfg.hidden_size))
        return cls(text=text_cfg, vision=_vision(cls, v),
                   initializer_factor=_factor(hf))

    def to_hf_config(self) -> dict[str, Any]:
        text = _write(self.text, _TEXT_FIELDS, "siglip_text_model")
        vision = _write(self.vision, _VISION_FIELDS, "siglip_vision_model")
        text["projection_size"] = self.text.projection_size
        vision["vision_use_head"] = True
        return {"model_type": "siglip", "architectures": ["SiglipModel"],
                "initializer_factor": self.initializer_factor, "text_config": text, "vision_config": vision}


# --- single towers: HF's CLIPVisionModel[WithProjection], CLIPTextModel[WithProjection],
# SiglipVisionModel and SiglipTextModel checkpoints, as a `ViTConfig` / `TextConfig`.

TOWER_ARCHITECTURES = {
    "clip_vision_model": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "clip_text_model": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "siglip_vision_model": ("SiglipVisionModel",),
    "siglip_text_model": ("SiglipTextModel",),
}


def tower_from_hf_config(hf: dict[str, Any]):
    """The tower config of a single-tower HF checkpoint (model_type `clip_vision_model`,
    `clip_text_model`, `siglip_vision_model` or `siglip_text_model`)."""
    model_type = hf.get("model_type")
    if model_type not in TOWER_ARCHITECTURES:
        raise ValueError(f"not a CLIP / SigLIP tower config: model_type {model_type!r}")
    archs = hf.get("architectures") or [TOWER_ARCHITECTURES[model_type][0]]
    if len(archs) != 1 or archs[0] not in TOWER_ARCHITECTURES[model_type]:
        raise ValueError(f"unsupported architectures {archs} for {model_type}; jimm reads "
                         f"{TOWER_ARCHITECTURES[model_type]}")
    projection = archs[0].endswith("WithProjection")
    tower = "vision" if "vision" in model_type else "text"
    if model_type.startswith("clip"):
        full = CLIPConfig.from_hf_config({"model_type": "clip", f"{tower}_config": hf,
                                          "projection_dim": hf.get("projection_dim", 512)})
        config = getattr(full, tower)
        if not projection:
            return dataclasses.replace(config, **({"num_labels": 0} if tower == "vision" else {"projection_size": 0}))
        return config
    if tower == "text":
        return SigLIPConfig.from_hf_config({"model_type": "siglip", "text_config": hf,
                                            "vision_config": {"hidden_size": hf.get("projection_size", hf.get("hidden_size", 768))}}).text
    return SigLIPConfig.from_hf_config({"model_type": "siglip", "vision_config": hf,
                                        "text_config": {"projection_size": hf.get("hidden_size", 768)}}).vision


def tower_model_type(config) -> str:
    """Which HF single-tower model a CLIP / SigLIP tower config is."""
    if isinstance(config, TextConfig):
        return "clip_text_model" if config.causal else "siglip_text_model"
    if config.pre_norm:
        return "clip_vision_model"
    if config.pooling == "map":
        return "siglip_vision_model"
    raise ValueError("this ViTConfig is not a CLIP or SigLIP vision tower (no pre-norm, no MAP pooling)")


def tower_to_hf_config(config) -> dict[str, Any]:
    """A `config.json` for the tower as HF's single-tower model (with its projection, if any)."""
    model_type = tower_model_type(config)
    if model_type == "clip_vision_model":
        hf = _write(config, _CLIP_VISION_FIELDS, model_type)
        hf["projection_dim"] = config.num_labels or 512
        arch = "CLIPVisionModelWithProjection" if config.num_labels else "CLIPVisionModel"
    elif model_type == "clip_text_model":
        hf = _write(config, _CLIP_TEXT_FIELDS, model_type)
        hf["projection_dim"] = config.projection_size or 512
        arch = "CLIPTextModelWithProjection" if config.projection_size else "CLIPTextModel"
    elif model_type == "siglip_vision_model":
        if config.num_labels:
            raise ValueError("HF's SiglipVisionModel has no projection head")
        hf = _write(config, _VISION_FIELDS, model_type)
        hf["vision_use_head"] = True
        arch = "SiglipVisionModel"
    else:
        hf = _write(config, _TEXT_FIELDS, model_type)
        hf["projection_size"] = config.projection_size
        arch = "SiglipTextModel"
    return {**hf, "architectures": [arch]}
