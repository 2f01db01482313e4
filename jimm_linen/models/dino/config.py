"""DINOv2 / DINOv3 configurations: HF `config.json` round trip and big_vision-style variants."""

from __future__ import annotations

import dataclasses
from typing import Any


from jimm_linen.activations import get_activation
from jimm_linen.config_utils import ImageGrid, check_fields, check_heads
from jimm_linen.models.vit.config import VARIANTS as VIT_VARIANTS

# HF's backbone fields (`Dinov2Backbone`, `DINOv3ViTBackbone`): kept for the round trip, unused by
# the models. `stage_names` is always derived from the depth, so it is read and not stored;
# `out_features` names the same stages as `out_indices`, which is stored (None: HF's default).
_BACKBONE_FIELDS = ("apply_layernorm", "reshape_hidden_states", "out_indices")


def _square(hf: dict[str, Any], key: str) -> None:
    """HF allows `[h, w]` image and patch sizes; jimm's DINO models are square."""
    value = hf.get(key)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{key} {value}: jimm's DINO models take square {key.split('_')[0]}s")
        hf[key] = value[0]


def _read(cls, hf: dict[str, Any], model_types: tuple[str, ...], fields: tuple[str, ...],
          architectures: dict[str, str]) -> dict[str, Any]:
    """The constructor arguments for `cls` from an HF config dict, strictly."""
    hf = dict(hf)
    model_type = hf.get("model_type", model_types[0])
    if model_type not in model_types:
        raise ValueError(f"{cls.__name__} reads model_type {' or '.join(map(repr, model_types))}, got {model_type!r}")
    check_fields(hf, set(fields) | set(_BACKBONE_FIELDS) | {"out_features", "stage_names"}, model_type)
    archs = hf.get("architectures") or [architectures[model_type]]
    if archs != [architectures[model_type]]:
        raise ValueError(f"unsupported {model_type} architectures {archs}; jimm reads {architectures[model_type]}")
    for key in ("image_size", "patch_size"):
        _square(hf, key)
    kwargs = {k: hf[k] for k in fields if k in hf}
    depth = hf.get("num_hidden_layers", cls.num_hidden_layers)
    stages = ["stem"] + [f"stage{i}" for i in range(1, depth + 1)]
    if hf.get("out_indices") is not None:
        kwargs["out_indices"] = tuple(hf["out_indices"])
    elif hf.get("out_features") is not None:
        kwargs["out_indices"] = tuple(stages.index(f) for f in hf["out_features"])
    if kwargs.get("out_indices") == (depth,):
        del kwargs["out_indices"]  # HF's default (the last stage), which None stands for
    for k in ("apply_layernorm", "reshape_hidden_states"):
        if k in hf:
            kwargs[k] = hf[k]
    return kwargs


def _write(config, fields: tuple[str, ...], architecture: str) -> dict[str, Any]:
    hf = {k: getattr(config, k) for k in fields}
    hf.update(model_type=config.model_type, architectures=[architecture],
              apply_layernorm=config.apply_layernorm, reshape_hidden_states=config.reshape_hidden_states)
    if config.out_indices is not None:
        hf["out_indices"] = list(config.out_indices)
    return hf


class _DINOConfig(ImageGrid):
    """What the DINO configs share: the encoder block options (see `layers.encoder.BLOCK_OPTIONS`)
    and the checks."""

    causal = False
    layer_scale = True
    block_dropout_prob = 0.0  # HF's DINO blocks have no residual dropout

    def _check(self) -> None:
        check_heads(self, "image")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        get_activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _from_variant(cls, table: dict[str, dict[str, Any]], variant: str, overrides: dict[str, Any]):
    name, _, patch = variant.partition("/")
    if name not in table or not patch.isdigit():
        raise ValueError(f"unknown {cls.__name__[:-6]} variant {variant!r}; expected '<size>/<patch>' with size in "
                         f"{list(table)}")
    return cls(**{**table[name], "patch_size": int(patch), **overrides})


def _vit_sizes(name: str) -> dict[str, int]:
    v = VIT_VARIANTS[name]
    return dict(hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
                num_attention_heads=v["num_attention_heads"])


# Meta's DINOv2 sizes: S, B and L are big_vision's; their g (1536 wide, 24 heads, SwiGLU) is not
# big_vision's g. The hub checkpoints run at 518 px.
DINOV2_VARIANTS: dict[str, dict[str, Any]] = {
    **{name: dict(_vit_sizes(name), image_size=518) for name in ("S", "B", "L")},
    "g": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True, image_size=518),
}

_DINOV2_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps", "image_size", "patch_size",
    "num_channels", "qkv_bias", "layerscale_value", "drop_path_rate", "use_swiglu_ffn",
)
DINOV2_ARCHITECTURES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}


@dataclasses.dataclass(frozen=True)
class DINOv2Config(_DINOConfig):
    """HF `Dinov2Config` / `Dinov2WithRegistersConfig` (same field names).

    `model_type` None picks "dinov2_with_registers" when there are register tokens, else
    "dinov2". The two HF classes also differ in how they resize the position embeddings for
    another resolution: bicubic without antialiasing (`dinov2`), with it (`..._with_registers`).
    `hidden_dropout_prob` drops after the embeddings only, as in HF.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_swiglu_ffn: bool = False
    use_mask_token: bool = True
    num_register_tokens: int = 0
    model_type: str | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    out_indices: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.model_type is None:
            object.__setattr__(self, "model_type", "dinov2_with_registers" if self.num_register_tokens else "dinov2")
        if self.model_type not in DINOV2_ARCHITECTURES:
            raise ValueError(f"unknown DINOv2 model_type {self.model_type!r}; use one of {list(DINOV2_ARCHITECTURES)}")
        if self.model_type == "dinov2" and self.num_register_tokens:
            raise ValueError("HF's Dinov2Model has no register tokens; use model_type='dinov2_with_registers'")
        if self.model_type == "dinov2_with_registers" and not self.use_mask_token:
            raise ValueError("HF's Dinov2WithRegistersModel always has a mask token (use_mask_token=True)")
        self._check()

    @property
    def intermediate_size(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        # HF's SwiGLU keeps 2/3 of the MLP width, rounded up to a multiple of 8.
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else hidden

    @property
    def mlp_gated(self) -> bool:
        return self.use_swiglu_ffn

    @property
    def mlp_act(self) -> str | None:
        return "silu" if self.use_swiglu_ffn else None  # HF's SwiGLU ignores hidden_act

    @property
    def interpolate_antialias(self) -> bool:
        return self.model_type == "dinov2_with_registers"

    @property
    def num_positions(self) -> int:
        return self.grid_size ** 2 + 1

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "DINOv2Config":
        """"S/14", "B/14", "L/14", "g/14": Meta's DINOv2 sizes; the rest from `overrides`
        (e.g. `num_register_tokens=4` for the "with registers" checkpoints)."""
        return _from_variant(cls, DINOV2_VARIANTS, variant, overrides)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "DINOv2Config":
        """Read an HF `Dinov2Model` / `Dinov2WithRegistersModel` `config.json` dict."""
        model_type = hf.get("model_type", "dinov2")
        fields = _DINOV2_FIELDS + (("num_register_tokens",) if model_type == "dinov2_with_registers"
                                   else ("use_mask_token",))
        kwargs = _read(cls, hf, tuple(DINOV2_ARCHITECTURES), fields, DINOV2_ARCHITECTURES)
        if model_type == "dinov2_with_registers":
            kwargs.setdefault("num_register_tokens", 4)  # HF's default
        return cls(**kwargs, model_type=model_type)

    def to_hf_config(self) -> dict[str, Any]:
        extra = ("num_register_tokens",) if self.model_type == "dinov2_with_registers" else ("use_mask_token",)
        return _write(self, _DINOV2_FIELDS + extra, DINOV2_ARCHITECTURES[self.model_type])


# DINOv3 ViTs: S, B and L at big_vision's sizes, 4 registers, patch 16 (the sizes this table is
# sure of; others through `DINOv3Config(...)` or their config.json).
DINOV3_VARIANTS: dict[str, dict[str, Any]] = {
    name: dict(_vit_sizes(name), intermediate_size=VIT_VARIANTS[name]["intermediate_size"], num_register_tokens=4)
    for name in ("S", "B", "L")
}

_DINOV3_FIELDS = (
    "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "attention_dropout", "initializer_range", "layer_norm_eps", "rope_theta", "image_size", "num_channels",
    "query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias", "layerscale_value", "drop_path_rate",
    "use_gated_mlp", "num_register_tokens", "pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale",
)


@dataclasses.dataclass(frozen=True)
class DINOv3Config(_DINOConfig):
    """HF `DINOv3ViTConfig` (same field names). Positions are 2-D RoPE on the patch tokens, so
    any image size divisible by `patch_size` runs as is; `image_size` only sets the example
    input. `pos_embed_shift` / `_jitter` / `_rescale` augment the patch coordinates in
    training only (`train=True`), as HF does in `model.train()` mode."""

    patch_size: int = 16
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    hidden_act: str = "gelu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    image_size: int = 224
    num_channels: int = 3
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_gated_mlp: bool = False
    num_register_tokens: int = 0
    pos_embed_shift: float | None = None
    pos_embed_jitter: float | None = None
    pos_embed_rescale: float | None = 2.0
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    out_indices: tuple[int, ...] | None = None

    model_type = "dinov3_vit"
    hidden_dropout_prob = 0.0  # HF's DINOv3 has no hidden dropout anywhere
    use_mask_token = True

    def __post_init__(self):
        self._check()
        if self.head_dim % 4:
            raise ValueError(f"DINOv3's 2-D RoPE needs a head dim divisible by 4, got {self.head_dim}")

    @property
    def qkv_bias(self) -> tuple[bool, bool, bool]:
        return (self.query_bias, self.key_bias, self.value_bias)

    @property
    def out_bias(self) -> bool:
        return self.proj_bias

    @property
    def mlp_gated(self) -> bool:
        return self.use_gated_mlp

    @property
    def attention_probs_dropout_prob(self) -> float:
        return self.attention_dropout

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "DINOv3Config":
        """"S/16", "B/16", "L/16"; the rest from `overrides`."""
        return _from_variant(cls, DINOV3_VARIANTS, variant, overrides)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "DINOv3Config":
        """Read an HF `DINOv3ViTModel` `config.json` dict."""
        return cls(**_read(cls, hf, ("dinov3_vit",), _DINOV3_FIELDS, {"dinov3_vit": "DINOv3ViTModel"}))

    def to_hf_config(self) -> dict[str, Any]:
        return _write(self, _DINOV3_FIELDS, "DINOv3ViTModel")
