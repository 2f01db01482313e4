"""The Vision Transformer as one Linen module."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.activations import get_activation
from jimm_linen.layers import (
    DenseGeneral, Encoder, LayerNorm, MAPHead, PatchEmbedding, check_images,
)
from jimm_linen.layers.embed import position_embedding
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.models.base import Tower
from jimm_linen.models.vit.config import ViTConfig
from jimm_linen.partitioning import constrain


class ViT(Tower):
    """Vision Transformer on NHWC float images: `apply(variables, images)` returns logits (with a
    head) or pooled features."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images, train: bool = False, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False):
        cfg = self.config
        check_images(images, cfg.num_channels, cfg.patch_size)
        kernel_init = default_kernel_init(cfg.initializer_range)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        x = PatchEmbedding(cfg.patch_size, cfg.hidden_size, use_bias=cfg.patch_bias,
                           kernel_init=kernel_init, name="embedding", **kw)(images)
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if cfg.pooling == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(kernel_init, (None, None, "embed")),
                             (1, 1, d), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
        n_prefix = 1 if cfg.pooling == "cls" else 0
        x = x + position_embedding(self, gh, gw, interpolate_pos_encoding, kernel_init, n_prefix).astype(x.dtype)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, not train)
        if cfg.pre_norm:
            x = LayerNorm(cfg.layer_norm_eps, name="pre_norm", **kw)(x)

        encoded, per_layer = Encoder(cfg, **self.runtime(), name="Transformer")(
            x, None, not train, return_hidden_states)

        if cfg.pooling == "cls":
            pooled = encoded[:, 0]
        elif cfg.pooling == "mean":
            pooled = encoded.mean(axis=1)
        else:
            pooled = MAPHead(cfg, self.attention_fn, name="MAPHead_0", **kw)(encoded)
        if cfg.pooler:
            pooled = DenseGeneral(cfg.pooler_output_size, kernel_axes=("embed", "mlp"),
                                  kernel_init=kernel_init, name="pre_logits", **kw)(pooled)
            pooled = get_activation(cfg.pooler_act)(pooled)
        return self.tower_output(pooled, encoded, (x,) + (per_layer or ()), head=cfg.num_labels,
                                 head_bias=cfg.head_bias, init=kernel_init,
                                 return_hidden_states=return_hidden_states)
