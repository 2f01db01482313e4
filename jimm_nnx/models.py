"""NNX models with the `jimm` surface, built from the `jimm_linen` modules through `bridge`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
from jimm_nnx.sharding import ShardingArg, resolve_sharding

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


class PretrainedModel(bridge.LinenModule):
    """What every jimm_nnx model shares: a `jimm_linen` module of type `linen_cls` and its
    variables as one `nnx.Module`, built with `from_pretrained` (an HF checkpoint directory or
    hub id) or `from_config` (random init). `nnx.state(model, nnx.Param)` is the Linen params
    tree, so `bridge.to_linen_variables(model)` and `jimm_linen` checkpoints work on it unchanged.
    """

    linen_cls: type = ViT
    config_cls: type = ViTConfig
    model_type: str = "vit"
    tower: str | None = None  # which tower of a two-tower checkpoint the class is (jimm_linen's tower=)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, attention_fn: Callable | None = None,
                        dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        sharding: ShardingArg = None, use_gradient_checkpointing: bool | str = False,
                        rngs: RngsArg = None, **kwargs: Any):
        """Load an HF checkpoint. `param_dtype=None` keeps the stored dtype. `sharding`:
        `Sharding(rules, mesh)`, `NoSharding()` or a preset name; the default shards FSDP-style
        on the current mesh if one is set. Each parameter is read straight into its sharding.
        `kwargs` go to `jimm_linen.from_pretrained` (`dont_load=`, `scan=`, config overrides
        such as `num_labels=`); `rngs` initialises `dont_load` parameters and drives dropout."""
        rngs, placement = _default_rngs(rngs), resolve_sharding(sharding)
        module, variables = cls._load(name_or_path, rngs, placement, attention_fn=attention_fn, dtype=dtype,
                                      param_dtype=param_dtype, remat_policy=_remat(use_gradient_checkpointing),
                                      tower=cls.tower, **kwargs)
        if not cls._accepts(module.config):
            raise ValueError(f"{name_or_path} is not a {cls.model_type} checkpoint (it holds a {type(module).__name__}"
                             f"{' tower' if cls.tower else ''} of another kind; use the jimm_nnx class for its "
                             f"model_type)")
        return cls.from_linen_variables(module, variables, placement=placement, rngs=rngs)

    @staticmethod
    def _load(name_or_path, rngs, placement: bridge.Placement, **kwargs: Any):
        """`jimm_linen.from_pretrained`, each parameter read straight onto the placement, in its
        logical-axis box (so the bridge needs no init and no second placement)."""
        return jimm_linen.from_pretrained(name_or_path, rng=bridge.rng_streams(rngs)["params"], boxed=True,
                                          shardings=placement.leaf_sharding if placement.sharded else None,
                                          **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any, *, rngs: RngsArg = None,
                    attention_fn: Callable | None = None, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32, sharding: ShardingArg = None,
                    use_gradient_checkpointing: bool | str = False, scan: bool = True,
                    **config_overrides: Any):
        """A randomly initialised model from an HF `config.json` dict (or a transformers config,
        or a `jimm_linen` config), every parameter created directly in its sharding. `rngs` is
        an `nnx.Rngs` (default `nnx.Rngs(0)`, fresh per call), or a key or seed to initialise
        exactly like `module.init(key, ...)`; it also drives dropout. `config_overrides`
        replace config fields."""
        config = cls._config(config, config_overrides)
        module = cls._module_cls(config)(config, attention_fn=attention_fn, dtype=dtype, param_dtype=param_dtype,
                               scan=scan, remat_policy=_remat(use_gradient_checkpointing))
        return cls.wrap(module, *config.dummy_inputs(), rngs=_default_rngs(rngs), placement=resolve_sharding(sharding))

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

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write `config.json` + safetensors (the files `jimm_linen.save_pretrained` writes,
        which `transformers` loads)."""
        return jimm_linen.save_pretrained(self.linen_module, bridge.to_linen_variables(self), out_dir, **kwargs)

    def _run(self, *args, train: bool, rngs: RngsArg, method=None, **kwargs):
        if not train and rngs is None:
            rngs = {}  # evaluation needs no random streams; don't advance the model's
        return bridge.LinenModule.__call__(self, *args, rngs=rngs, method=method, train=train, **kwargs)


class VisionTransformer(PretrainedModel):
    """`jimm_linen.ViT` as an `nnx.Module`: `model(images)` on NHWC float images gives logits
    (or pooled features for a checkpoint without a classifier head)."""

    def __call__(self, images: jax.Array, train: bool = False, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False, *, rngs: RngsArg = None):
        """Logits, or a `jimm_linen.TowerOutput` with `return_hidden_states=True`. Dropout (when
        `train=True`) draws from `rngs`, by default the model's own."""
        return self._run(images, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states)


class _ImageText(PretrainedModel):
    def __call__(self, images: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 train: bool = False, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False, return_loss: bool = False, *, rngs: RngsArg = None):
        """A `jimm_linen.ImageTextOutput` (normalised embeddings, `logits_per_image`,
        `logits_per_text`; `loss` with `return_loss=True`; tower outputs with
        `return_hidden_states=True`) for NHWC images and token ids."""
        return self._run(images, input_ids, attention_mask, train=train, rngs=rngs,
                         interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states, return_loss=return_loss)

    def encode_image(self, images: jax.Array, train: bool = False, interpolate_pos_encoding: bool = False,
                     *, rngs: RngsArg = None):
        """Unnormalised image embeddings (HF's `get_image_features`)."""
        return self._run(images, train=train, rngs=rngs, method="encode_image",
                         interpolate_pos_encoding=interpolate_pos_encoding)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, train: bool = False,
                    *, rngs: RngsArg = None):
        """Unnormalised text embeddings (HF's `get_text_features`)."""
        return self._run(input_ids, attention_mask, train=train, rngs=rngs, method="encode_text")


class CLIP(_ImageText):
    """`jimm_linen.CLIP` as an `nnx.Module`: `model(images, input_ids, attention_mask)`."""

    linen_cls = linen_clip.CLIP
    config_cls = linen_clip.CLIPConfig
    model_type = "clip"


class SigLIP(_ImageText):
    """`jimm_linen.SigLIP` as an `nnx.Module`: `model(images, input_ids, attention_mask)`."""

    linen_cls = linen_clip.SigLIP
    config_cls = linen_clip.SigLIPConfig
    model_type = "siglip"


class _Tower(PretrainedModel):
    """One tower of CLIP / SigLIP. `from_pretrained` reads the tower's own HF checkpoint (e.g.
    `CLIPVisionModelWithProjection`) or takes the tower out of a full `CLIPModel` /
    `SiglipModel` checkpoint, as HF's tower classes do; `save_pretrained` writes HF's
    single-tower format. CLIP towers include their projection when the checkpoint has one."""

    tower = "vision"

    @classmethod
    def _from_hf(cls, hf: dict[str, Any]):
        return FAMILIES[cls.model_type].from_hf(hf)

    @classmethod
    def _accepts(cls, config) -> bool:
        return isinstance(config, cls.config_cls) and FAMILIES[cls.model_type].owns(config)


class _VisionTower(_Tower, VisionTransformer):
    """`model(images)`: the (projected, for CLIP with projection) image embedding, unnormalised."""


class _TextTower(_Tower):
    linen_cls = linen_clip.TextTransformer
    config_cls = linen_clip.TextConfig
    tower = "text"

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, train: bool = False,
                 return_hidden_states: bool = False, *, rngs: RngsArg = None):
        """The (projected) text embedding, unnormalised, or a `jimm_linen.TowerOutput` with
        `return_hidden_states=True`."""
        return self._run(input_ids, attention_mask, train=train, rngs=rngs,
                         return_hidden_states=return_hidden_states)


class CLIPVisionModel(_VisionTower):
    model_type = "clip_vision_model"


class CLIPTextModel(_TextTower):
    model_type = "clip_text_model"


class SigLIPVisionModel(_VisionTower):
    model_type = "siglip_vision_model"


class SigLIPTextModel(_TextTower):
    model_type = "siglip_text_model"


class _DINO(VisionTransformer):
    def __call__(self, images: jax.Array, train: bool = False, interpolate_pos_encoding: bool = True,
                 return_hidden_states: bool = False, *, bool_masked_pos: jax.Array | None = None,
                 rngs: RngsArg = None):
        """The class token after the final LayerNorm (HF's `pooler_output`), or a
        `jimm_linen.TowerOutput` with `return_hidden_states=True`. `bool_masked_pos`
        `[batch, patches]` replaces those patches by the mask token."""
        return self._run(images, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states, bool_masked_pos=bool_masked_pos)


class DINOv2Model(_DINO):
    """`jimm_linen.DINOv2` as an `nnx.Module` (HF `Dinov2Model` and `Dinov2WithRegistersModel`
    checkpoints); other resolutions resize the position embeddings as HF does."""

    linen_cls = linen_dino.DINOv2
    config_cls = linen_dino.DINOv2Config
    model_type = "dinov2"


class DINOv3Model(_DINO):
    """`jimm_linen.DINOv3` as an `nnx.Module` (HF `DINOv3ViTModel` checkpoints); any image size
    divisible by the patch size."""

    linen_cls = linen_dino.DINOv3
    config_cls = linen_dino.DINOv3Config
    model_type = "dinov3_vit"
