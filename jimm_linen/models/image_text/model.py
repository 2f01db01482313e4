"""The text tower and the two-tower image-text models (CLIP, SigLIP) as Linen modules.

Parameter names follow big_vision's `two_towers` model: the image tower under `img` (a `ViT`),
the text tower under `txt` (`Embed_0`, `pos_embedding`, `Encoder_0`, `head`), the log
temperature `t` and, for SigLIP, the bias `b`. A big_vision checkpoint therefore maps onto
this tree almost one to one (`jimm_linen.big_vision`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers import Encoder
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.models.image_text.config import CLIPConfig, SigLIPConfig, TextConfig
from jimm_linen.models.base import Model, Tower
from jimm_linen.models.image_text.losses import contrastive_loss, sigmoid_loss
from jimm_linen.models.vit.model import ViT
from jimm_linen.outputs import ImageTextOutput
from jimm_linen.partitioning import constrain


def check_text(input_ids, attention_mask, config: TextConfig) -> None:
    """Clear errors for token ids the text tower cannot take. The id range is checked only
    when the ids are concrete (not under `jit`); under `jit` an out-of-range id embeds as NaN."""
    if input_ids.ndim != 2:
        raise ValueError(f"expected input_ids of shape (batch, length), got {input_ids.shape}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"expected integer token ids, got dtype {input_ids.dtype}")
    length = input_ids.shape[1]
    if length > config.max_position_embeddings:
        raise ValueError(f"text of length {length} is longer than max_position_embeddings "
                         f"{config.max_position_embeddings}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} differs from input_ids shape {input_ids.shape}")
    if not isinstance(input_ids, jax.core.Tracer):
        ids = np.asarray(input_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
            raise ValueError(f"token ids must be in [0, {config.vocab_size}) (vocab_size), "
                             f"got values in [{ids.min()}, {ids.max()}]")


class TextTransformer(Tower):
    """CLIP-style text encoder: token + learned position embeddings, pre-LN blocks (causal or
    not), final LayerNorm (`Encoder_0/encoder_norm`), pooling and an optional `head`.

    `apply(variables, input_ids, attention_mask=None)` returns the head's output (or the pooled
    features without a head); `attention_mask` is 1 for real tokens and 0 for padding, which no
    token attends to.
    """

    config: TextConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False, return_hidden_states: bool = False):
        cfg = self.config
        check_text(input_ids, attention_mask, cfg)
        init = default_kernel_init(cfg.initializer_range)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[1]
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="Embed_0",
                     embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")), **kw)(input_ids)
        pos = self.param("pos_embedding", nn.with_logical_partitioning(init, (None, "length", "embed")),
                         (1, cfg.max_position_embeddings, cfg.hidden_size), self.param_dtype)
        x = x + pos[:, :length].astype(x.dtype)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        mask = None
        if attention_mask is not None:  # (B, S) -> (B, 1, 1, S): padded keys are never attended
            mask = attention_mask.astype(bool)[:, None, None, :]
        encoded, per_layer = Encoder(cfg, **self.runtime(), name="Encoder_0")(
            x, mask, not train, return_hidden_states)
        pooled = encoded[jnp.arange(encoded.shape[0]), self._pool_index(input_ids)]
        return self.tower_output(pooled, encoded, (x,) + (per_layer or ()), head=cfg.projection_size,
                                 head_bias=cfg.head_bias, init=init, return_hidden_states=return_hidden_states)

    def _pool_index(self, input_ids):
        cfg = self.config
        if cfg.pooling == "last":
            return jnp.full((input_ids.shape[0],), input_ids.shape[1] - 1)
        if cfg.eos_token_id == 2:
            # HF keeps this for configs from before the EOS fix (transformers PR #24773): the
            # largest id, which was the EOS token in OpenAI's vocabulary.
            return jnp.argmax(input_ids, axis=-1)
        # The first EOS (padding may reuse the EOS id); position 0 if there is none, as in HF.
        return jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)


def _normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class _ImageText(Model):
    """Two towers and the learned logit scale (and bias). `encode_image` / `encode_text`
    give the unnormalised embeddings (HF's `get_image_features` / `get_text_features`) and work
    through `apply(..., method="encode_image")`."""

    # One tower's attention in place of `attention_fn` (e.g. a kernel only the text length suits).
    vision_attention_fn: Any = None
    text_attention_fn: Any = None

    def setup(self):
        cfg = self.config
        self.img = ViT(cfg.vision, **self.tower_runtime("vision"))
        self.txt = TextTransformer(cfg.text, **self.tower_runtime("text"))
        self.t = self.param("t", nn.with_logical_partitioning(nn.initializers.constant(cfg.logit_scale_init), (None,)),
                            (1,), self.param_dtype)
        if cfg.logit_bias:
            self.b = self.param("b", nn.with_logical_partitioning(nn.initializers.constant(cfg.logit_bias_init), (None,)),
                                (1,), self.param_dtype)

    def tower_runtime(self, tower: str) -> dict[str, Any]:
        """`runtime()` for one tower: its own attention function when one is set."""
        own = self.vision_attention_fn if tower == "vision" else self.text_attention_fn
        return {**self.runtime(), **({"attention_fn": own} if own is not None else {})}

    def encode_image(self, images, train: bool = False, interpolate_pos_encoding: bool = False,
                     return_hidden_states: bool = False):
        return self.img(images, train=train, interpolate_pos_encoding=interpolate_pos_encoding,
                        return_hidden_states=return_hidden_states)

    def encode_text(self, input_ids, attention_mask=None, train: bool = False, return_hidden_states: bool = False):
        return self.txt(input_ids, attention_mask, train=train, return_hidden_states=return_hidden_states)

    def logits(self, image_embeds, text_embeds):
        """`logits_per_text` for normalised embeddings: `text @ image.T * exp(t) (+ b)`."""
        logits = jnp.einsum("td,id->ti", text_embeds.astype(jnp.float32), image_embeds.astype(jnp.float32))
        logits = logits * jnp.exp(self.t.astype(jnp.float32))
        if self.config.logit_bias:
            logits = logits + self.b.astype(jnp.float32)
        return logits

    def __call__(self, images, input_ids, attention_mask=None, train: bool = False,
                 interpolate_pos_encoding: bool = False, return_hidden_states: bool = False,
                 return_loss: bool = False):
        if return_loss and images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"the loss pairs image i with text i: got {images.shape[0]} images and "
                             f"{input_ids.shape[0]} texts")
        vision = self.encode_image(images, train, interpolate_pos_encoding, return_hidden_states)
        text = self.encode_text(input_ids, attention_mask, train, return_hidden_states)
        image_embeds = _normalize(vision.output if return_hidden_states else vision)
        text_embeds = _normalize(text.output if return_hidden_states else text)
        logits_per_text = self.logits(image_embeds, text_embeds)
        return ImageTextOutput(
            image_embeds=image_embeds, text_embeds=text_embeds, logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text, loss=self.loss(logits_per_text) if return_loss else None,
            vision_output=vision if return_hidden_states else None,
            text_output=text if return_hidden_states else None)


class CLIP(_ImageText):
    """OpenAI CLIP (`CLIPConfig`): contrastive softmax loss."""

    config: CLIPConfig

    @staticmethod
    def loss(logits_per_text):
        return contrastive_loss(logits_per_text)


class SigLIP(_ImageText):
    """SigLIP (`SigLIPConfig`): sigmoid loss with a learned logit bias."""

    config: SigLIPConfig

    @staticmethod
    def loss(logits_per_text):
        return sigmoid_loss(logits_per_text)


def tower_module(model: _ImageText, tower: str) -> tuple[str, nn.Module]:
    """The name under which `model` keeps a tower and the tower as its own module (same dtypes,
    attention and layout): `tower="vision"` gives the `ViT` (its `head` is CLIP's visual
    projection), `"text"` the `TextTransformer`."""
    names = {"vision": ("img", ViT, model.config.vision), "text": ("txt", TextTransformer, model.config.text)}
    if tower not in names:
        raise ValueError(f"tower must be 'vision' or 'text', got {tower!r}")
    key, cls, config = names[tower]
    return key, cls(config, **model.tower_runtime(tower))


def split_tower(model: _ImageText, variables: dict, tower: str) -> tuple[nn.Module, dict]:
    """One tower of a CLIP / SigLIP model as its own module and variables (see `tower_module`).
    The arrays are shared, not copied."""
    key, module = tower_module(model, tower)
    return module, {col: tree[key] for col, tree in variables.items() if key in tree}
