"""NNX models with the `jimm` surface, built from the `jimm_linen` modules through `bridge`.

The names, arguments and return values are `jimm`'s (`VisionTransformer`, `CLIP`, `SigLIP` and
their towers; `from_pretrained(model_name_or_path, use_pytorch=False, rngs=..., dtype=...,
param_dtype=..., sharding=..., use_gradient_checkpointing=..., attention_fn=...)`,
`from_config(config, ...)`, `save_pretrained(save_directory)`); what jimm has no word for
(`ImageTextOutput` via `outputs`, attention masks, hidden states, dropout keys) is keyword-only
beside it. No model math lives here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import bridge
import jimm_linen
from jimm_linen.layers import remat_policy
from jimm_linen.models import dino as linen_dino
from jimm_linen.models import image_text as linen_clip
from jimm_linen.models.vit import ViT, ViTConfig
from jimm_linen.pretrained import FAMILIES
from jimm_nnx.sharding import (
    CLIPSharding, DINOv2Sharding, DINOv3Sharding, ShardingArg, SigLIPSharding, ViTSharding, resolve_sharding,
)

RngsArg = nnx.Rngs | jax.Array | int | None


def _remat(use_gradient_checkpointing: bool | str) -> str:
    """True -> "full" (recompute each block in the backward pass), False -> "none", or any
    `jimm_linen.layers.remat_policy` name ("minimal", "dots_saveable", "save:...")."""
    if isinstance(use_gradient_checkpointing, bool):
        return "full" if use_gradient_checkpointing else "none"
    remat_policy(use_gradient_checkpointing)  # an unknown name fails here, not at trace time
    return use_gradient_checkpointing


def _default_rngs(rngs: RngsArg) -> nnx.Rngs | jax.Array | int:
    # A fresh Rngs(0) per call: a shared default object would carry its state from one model
    # to the next, so the same call would build different models.
    return nnx.Rngs(0) if rngs is None else rngs


class _View:
    """jimm's attribute names for some of a bridged model's Variables (the same Variable
    objects, never copies: reading or writing through a view is reading or writing the model)."""

    def __init__(self, **items: Any):
        self.__dict__.update(items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.__dict__)})"


def _pooled(module, *args, **kwargs):
    """A tower's pooled features, before its head (jimm's `do_projection=False`)."""
    return module(*args, return_hidden_states=True, **kwargs).pooled


def _image_pooled(module, *args, **kwargs):
    return module.encode_image(*args, return_hidden_states=True, **kwargs).pooled


def _projection(do_projection: bool, return_hidden_states: bool) -> dict[str, Any]:
    """How a tower call runs: the whole tower, or its pooled features alone."""
    if do_projection or return_hidden_states:
        return {"return_hidden_states": return_hidden_states}
    return {"method": _pooled}


def _logits_per_image(module, *args, **kwargs):
    return module(*args, **kwargs).logits_per_image


class PretrainedModel(bridge.LinenModule):
    """What every jimm_nnx model shares: a `jimm_linen` module of type `linen_cls` and its
    variables as one `nnx.Module`, built with `from_pretrained` (an HF checkpoint directory,
    its `.safetensors` file, or a hub id) or `from_config` (random init).
    `nnx.state(model, nnx.Param)` is the Linen params tree, so `bridge.to_linen_variables(model)`
    and `jimm_linen` checkpoints work on it unchanged.

    `model.eval()` / `model.train()` set the mode a call runs in when it passes no `train=`
    (eval after construction); `rngs` drive dropout in train mode.
    """

    linen_cls: ClassVar[type] = ViT
    config_cls: ClassVar[type] = ViTConfig
    model_type: ClassVar[str] = "vit"
    tower: ClassVar[str | None] = None  # which tower of a two-tower checkpoint the class is (jimm_linen's tower=)
    default_sharding: ClassVar[ShardingArg] = ViTSharding  # jimm's per-model default
    plain_attributes = ("deterministic",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deterministic = True  # what nnx's eval() / train() set

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | os.PathLike, use_pytorch: bool = False,
                        rngs: RngsArg = None, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        sharding: ShardingArg = None, use_gradient_checkpointing: bool | str = False,
                        attention_fn: Callable | None = None, **kwargs: Any):
        """Load an HF checkpoint: a directory, its single `.safetensors` file (with
        `config.json` beside it) or a hub id. `use_pytorch=True` reads the PyTorch weights
        (`pytorch_model.bin`) where the checkpoint has both. `param_dtype=None` keeps the stored
        dtype. `sharding`: a `ShardingSpec` (class or instance; default `default_sharding`),
        `NoSharding()`, `Sharding(rules, mesh)` or a preset name, on the current mesh; each
        parameter is read straight into its sharding. Inside `jax.jit` / `nnx.jit` the
        parameters are constrained to their shardings instead, and land there as the
        function's outputs. `kwargs` go to `jimm_linen.from_pretrained` (`dont_load=`, `scan=`,
        config overrides such as `num_labels=`); `rngs` initialises `dont_load` parameters and
        drives dropout."""
        rngs, placement = _default_rngs(rngs), resolve_sharding(sharding, cls.default_sharding)
        module, variables = cls._load(model_name_or_path, rngs, placement, attention_fn=attention_fn, dtype=dtype,
                                      param_dtype=param_dtype, remat_policy=_remat(use_gradient_checkpointing),
                                      tower=cls.tower, prefer_pytorch=use_pytorch, **kwargs)
        if not cls._accepts(module.config):
            raise ValueError(f"{model_name_or_path} is not a {cls.model_type} checkpoint (it holds a "
                             f"{type(module).__name__}{' tower' if cls.tower else ''} of another kind; use the "
                             f"jimm_nnx class for its model_type)")
        return cls.from_linen_variables(module, variables, placement=placement, rngs=rngs)

    @staticmethod
    def _load(name_or_path, rngs, placement: bridge.Placement, **kwargs: Any):
        """`jimm_linen.from_pretrained`, each parameter read straight onto the placement, in its
        logical-axis box (so the bridge needs no init and no second placement)."""
        return jimm_linen.from_pretrained(name_or_path, rng=bridge.rng_streams(rngs)["params"], boxed=True,
                                          shardings=placement.leaf_sharding if placement.concrete else None,
                                          **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any, *, rngs: RngsArg = None,
                    dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, sharding: ShardingArg = None,
                    use_gradient_checkpointing: bool | str = False, attention_fn: Callable | None = None,
                    scan: bool = True, **config_overrides: Any):
        """A randomly initialised model from an HF `config.json` dict (or a transformers config,
        or a `jimm_linen` config), every parameter created directly in its sharding. `rngs` is
        an `nnx.Rngs` (default `nnx.Rngs(0)`, fresh per call), or a key or seed to initialise
        exactly like `module.init(key, ...)`; it also drives dropout. `config_overrides`
        replace config fields."""
        return cls._build(cls._config(config, config_overrides), rngs, sharding, dict(
            attention_fn=attention_fn, dtype=dtype, param_dtype=param_dtype, scan=scan,
            remat_policy=_remat(use_gradient_checkpointing)))

    @classmethod
    def _build(cls, config, rngs: RngsArg, sharding: ShardingArg, runtime: dict[str, Any]):
        module = cls._module_cls(config)(config, **runtime)
        return cls.wrap(module, *config.dummy_inputs(), rngs=_default_rngs(rngs),
                        placement=resolve_sharding(sharding, cls.default_sharding))

    @classmethod
    def _config(cls, config, overrides: dict[str, Any]):
        if hasattr(config, "to_dict") and not isinstance(config, Mapping):  # a transformers config
            config = config.to_dict()
        if isinstance(config, Mapping):
            config = cls._from_hf(dict(config))
        elif not cls._accepts(config):
            raise TypeError(f"config must be an HF {cls.model_type} config dict or a {cls.config_cls.__name__} "
                            f"for it, got {config!r:.80}")
        return dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def _module_cls(cls, config) -> type:
        """The `jimm_linen` module `from_config` builds for `config`."""
        return cls.linen_cls

    @classmethod
    def _from_hf(cls, hf: dict[str, Any]):
        return cls.config_cls.from_hf_config(hf)

    @classmethod
    def _accepts(cls, config) -> bool:
        return isinstance(config, cls.config_cls)

    @property
    def config(self):
        return self.linen_module.config

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write `config.json` + `model.safetensors` (the files `jimm_linen.save_pretrained`
        writes, which `transformers` loads)."""
        return jimm_linen.save_pretrained(self.linen_module, bridge.to_linen_variables(self), save_directory,
                                          **kwargs)

    def _run(self, *args, train: bool | None, rngs: RngsArg, method=None, **kwargs):
        if train is None:
            train = not self.deterministic
        if not train and rngs is None:
            rngs = {}  # evaluation needs no random streams; don't advance the model's
        return bridge.LinenModule.__call__(self, *args, rngs=rngs, method=method, train=train, **kwargs)


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (jimm's positional order: (inputs, {name})); pass other "
                        f"arguments such as attention_mask by keyword, got {type(value).__name__}")


class VisionTransformer(PretrainedModel):
    """`jimm_linen.ViT` as an `nnx.Module`: `model(images)` on NHWC float images gives logits
    (or pooled features for a checkpoint without a classifier head).

    A batch that the mesh does not divide runs as it is: where the rules would split it over
    mesh axes that do not divide it, it stays whole on those axes (replicated), and the outputs
    keep the inputs' batch sharding."""

    def __call__(self, x: jax.Array, *, train: bool | None = None, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False, rngs: RngsArg = None):
        """Logits, or a `jimm_linen.TowerOutput` with `return_hidden_states=True`. Dropout (in
        train mode, or with `train=True`) draws from `rngs`, by default the model's own."""
        return self._run(x, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states)

    @property
    def encoder(self) -> _View:
        """jimm's `encoder` names: `position_embeddings`, `cls_token` (the same Variables)."""
        return _View(position_embeddings=self.pos_embedding, **({"cls_token": self.cls} if hasattr(self, "cls") else {}))

    @property
    def classifier(self) -> _View:
        """jimm's `classifier` (`kernel`, `bias`): this model's `head`."""
        if not hasattr(self, "head"):
            raise AttributeError("this model has no classifier head (a checkpoint without one, or num_labels=0)")
        return _View(**self.head)


class _ImageText(PretrainedModel):
    """CLIP / SigLIP: `model(image, text)` gives the `(n_images, n_texts)` logits, as jimm's
    models do; `outputs(...)` gives the whole `jimm_linen.ImageTextOutput`."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any, *, rngs: RngsArg = None,
                    dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, sharding: ShardingArg = None,
                    use_gradient_checkpointing: bool | str = False, attention_fn: Callable | None = None,
                    vision_attention_fn: Callable | None = None, text_attention_fn: Callable | None = None,
                    scan: bool = True, **config_overrides: Any):
        """`PretrainedModel.from_config`, and `vision_attention_fn` / `text_attention_fn` in
        place of `attention_fn` for one tower."""
        return cls._build(cls._config(config, config_overrides), rngs, sharding, dict(
            attention_fn=attention_fn, vision_attention_fn=vision_attention_fn, text_attention_fn=text_attention_fn,
            dtype=dtype, param_dtype=param_dtype, scan=scan, remat_policy=_remat(use_gradient_checkpointing)))

    def __call__(self, image: jax.Array, text: jax.Array, *, attention_mask: jax.Array | None = None,
                 train: bool | None = None, interpolate_pos_encoding: bool = False, rngs: RngsArg = None):
        """`logits_per_image`: scaled cosine similarities (plus SigLIP's bias), one row per
        image, one column per text."""
        return self._run(image, text, attention_mask, train=train, rngs=rngs, method=_logits_per_image,
                         interpolate_pos_encoding=interpolate_pos_encoding)

    def outputs(self, images: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                train: bool | None = None, interpolate_pos_encoding: bool = False,
                return_hidden_states: bool = False, return_loss: bool = False, *, rngs: RngsArg = None):
        """A `jimm_linen.ImageTextOutput` (normalised embeddings, `logits_per_image`,
        `logits_per_text`; `loss` with `return_loss=True`; tower outputs with
        `return_hidden_states=True`) for NHWC images and token ids."""
        return self._run(images, input_ids, attention_mask, train=train, rngs=rngs,
                         interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states, return_loss=return_loss)

    def encode_image(self, image: jax.Array, do_projection: bool = True, *, train: bool | None = None,
                     interpolate_pos_encoding: bool = False, rngs: RngsArg = None):
        """Unnormalised image embeddings (HF's `get_image_features`); `do_projection=False`:
        the pooled features before CLIP's projection (SigLIP has none: the same either way)."""
        _check_flag("do_projection", do_projection)
        return self._run(image, train=train, rngs=rngs, method="encode_image" if do_projection else _image_pooled,
                         interpolate_pos_encoding=interpolate_pos_encoding)

    def encode_text(self, text: jax.Array, *, attention_mask: jax.Array | None = None, train: bool | None = None,
                    rngs: RngsArg = None):
        """Unnormalised text embeddings (HF's `get_text_features`)."""
        return self._run(text, attention_mask, train=train, rngs=rngs, method="encode_text")

    @property
    def vision_model(self) -> _View:
        """jimm's `vision_model` names (`encoder.position_embeddings`, `visual_projection`)."""
        return _vision_view(self.img)

    @property
    def text_model(self) -> _View:
        """jimm's `text_model` names (`text_projection`, `token_embedding`, `positional_embedding`)."""
        return _text_view(self.txt)

    @property
    def logit_scale(self) -> nnx.Variable:
        """The log temperature (big_vision's `t`, shape (1,))."""
        return self.t


def _vision_view(tree: Mapping) -> _View:
    items = {"encoder": _View(position_embeddings=tree["pos_embedding"])}
    if "head" in tree:
        items["visual_projection"] = _View(**tree["head"])
    return _View(**items)


def _text_view(tree: Mapping) -> _View:
    items = {"token_embedding": _View(**tree["Embed_0"]), "positional_embedding": tree["pos_embedding"]}
    if "head" in tree:
        items["text_projection"] = _View(**tree["head"])
    return _View(**items)


class CLIP(_ImageText):
    """`jimm_linen.CLIP` as an `nnx.Module`: `model(image, text)`."""

    linen_cls = linen_clip.CLIP
    config_cls = linen_clip.CLIPConfig
    model_type = "clip"
    default_sharding = CLIPSharding


class SigLIP(_ImageText):
    """`jimm_linen.SigLIP` as an `nnx.Module`: `model(image, text)`."""

    linen_cls = linen_clip.SigLIP
    config_cls = linen_clip.SigLIPConfig
    model_type = "siglip"
    default_sharding = SigLIPSharding

    @property
    def logit_bias(self) -> nnx.Variable:
        return self.b


class _Tower(PretrainedModel):
    """One tower of CLIP / SigLIP. `from_pretrained` reads the tower's own HF checkpoint (e.g.
    `CLIPVisionModelWithProjection`) or takes the tower out of a full `CLIPModel` /
    `SiglipModel` checkpoint, as HF's tower classes do; `from_config` takes a tower's config or
    the full two-tower one (its tower, as jimm does); `save_pretrained` writes HF's single-tower
    format. CLIP towers include their projection when the checkpoint (or full config) has one."""

    tower = "vision"
    full_cls: ClassVar[type] = linen_clip.CLIPConfig

    @classmethod
    def _from_hf(cls, hf: dict[str, Any]):
        if "vision_config" in hf or "text_config" in hf:  # a two-tower config
            return getattr(cls.full_cls.from_hf_config(hf), cls.tower)
        return FAMILIES[cls.model_type].from_hf(hf)

    @classmethod
    def _accepts(cls, config) -> bool:
        return isinstance(config, cls.config_cls) and FAMILIES[cls.model_type].owns(config)


class _VisionTower(_Tower, VisionTransformer):
    def __call__(self, image: jax.Array, do_projection: bool = True, *, train: bool | None = None,
                 interpolate_pos_encoding: bool = False, return_hidden_states: bool = False, rngs: RngsArg = None):
        """The image embedding, unnormalised: projected (CLIP with projection) or, with
        `do_projection=False`, the pooled features before it (SigLIP has no projection: the same
        either way); a `jimm_linen.TowerOutput` with `return_hidden_states=True`."""
        _check_flag("do_projection", do_projection)
        return self._run(image, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         **_projection(do_projection, return_hidden_states))

    @property
    def visual_projection(self) -> _View:
        """jimm's `visual_projection` (`kernel`): this tower's `head`."""
        if not hasattr(self, "head"):
            raise AttributeError("this vision tower has no projection")
        return _View(**self.head)


class _TextTower(_Tower):
    linen_cls = linen_clip.TextTransformer
    config_cls = linen_clip.TextConfig
    tower = "text"

    def __call__(self, text: jax.Array, do_projection: bool = True, *, attention_mask: jax.Array | None = None,
                 train: bool | None = None, return_hidden_states: bool = False, rngs: RngsArg = None):
        """The text embedding, unnormalised: projected (by the tower's head) or, with
        `do_projection=False`, the pooled features; a `jimm_linen.TowerOutput` with
        `return_hidden_states=True`."""
        _check_flag("do_projection", do_projection)
        return self._run(text, attention_mask, train=train, rngs=rngs,
                         **_projection(do_projection, return_hidden_states))

    @property
    def text_projection(self) -> _View:
        """jimm's `text_projection` (`kernel`, and SigLIP's `bias`): this tower's `head`."""
        if not hasattr(self, "head"):
            raise AttributeError("this text tower has no projection")
        return _View(**self.head)

    @property
    def token_embedding(self) -> _View:
        return _View(**self.Embed_0)

    @property
    def positional_embedding(self) -> nnx.Variable:
        return self.pos_embedding


class CLIPVisionModel(_VisionTower):
    model_type = "clip_vision_model"
    default_sharding = CLIPSharding


class CLIPTextModel(_TextTower):
    model_type = "clip_text_model"
    default_sharding = CLIPSharding


class SigLIPVisionModel(_VisionTower):
    model_type = "siglip_vision_model"
    full_cls = linen_clip.SigLIPConfig
    default_sharding = SigLIPSharding


class SigLIPTextModel(_TextTower):
    model_type = "siglip_text_model"
    full_cls = linen_clip.SigLIPConfig
    default_sharding = SigLIPSharding


class _DINO(VisionTransformer):
    def __call__(self, x: jax.Array, *, train: bool | None = None, interpolate_pos_encoding: bool = True,
                 return_hidden_states: bool = False, bool_masked_pos: jax.Array | None = None,
                 rngs: RngsArg = None):
        """The class token after the final LayerNorm (HF's `pooler_output`, jimm's output), or a
        `jimm_linen.TowerOutput` with `return_hidden_states=True`. `bool_masked_pos`
        `[batch, patches]` replaces those patches by the mask token."""
        return self._run(x, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states, bool_masked_pos=bool_masked_pos)


class DINOv2Model(_DINO):
    """`jimm_linen.DINOv2` as an `nnx.Module` (HF `Dinov2Model` and `Dinov2WithRegistersModel`
    checkpoints); other resolutions resize the position embeddings as HF does."""

    linen_cls = linen_dino.DINOv2
    config_cls = linen_dino.DINOv2Config
    model_type = "dinov2"
    default_sharding = DINOv2Sharding


class DINOv3Model(_DINO):
    """`jimm_linen.DINOv3` as an `nnx.Module` (HF `DINOv3ViTModel` checkpoints); any image size
    divisible by the patch size."""

    linen_cls = linen_dino.DINOv3
    config_cls = linen_dino.DINOv3Config
    model_type = "dinov3_vit"
    default_sharding = DINOv3Sharding


# jimm's module paths (jimm.models.clip.sharding.CLIPSharding, ...) as attributes too; last,
# since those modules re-export the classes above.
from jimm_nnx.models import clip, dinov2, dinov3, siglip, vit  # noqa: E402, F401
