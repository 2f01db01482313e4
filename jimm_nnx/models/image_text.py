"""What CLIP and SigLIP share (`jimm_nnx.models.clip`, `jimm_nnx.models.siglip`): the two-tower
model (`_ImageText`: `model(image, text)`, `outputs`, `encode_image`, `encode_text`) and its
single towers (`_VisionTower`, `_TextTower`), with jimm's attribute names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jimm_linen.models import image_text as linen_clip
from jimm_linen.pretrained import FAMILIES
from jimm_nnx.models.base import PretrainedModel, RngsArg, _remat, _View
from jimm_nnx.models.vit.model import VisionTransformer
from jimm_nnx.sharding import ShardingArg


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


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (jimm's positional order: (inputs, {name})); pass other "
                        f"arguments such as attention_mask by keyword, got {type(value).__name__}")


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

    @classmethod
    def _loads(cls, family, config) -> bool:
        if isinstance(config, cls.full_cls):  # a two-tower checkpoint: this tower of it
            return cls._accepts(getattr(config, cls.tower))
        return family.model_type == cls.model_type and cls._accepts(config)


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
