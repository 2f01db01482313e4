"""DINOv2 and DINOv3 as Linen modules: patch tokens, a class token and register tokens, the
shared encoder with LayerScale, then the final LayerNorm; the pooled output is the class token.
DINOv2 adds learned position embeddings (resized bicubically for other resolutions); DINOv3
rotates queries and keys of the patch tokens by their 2-D position (RoPE)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.layers import Encoder, PatchEmbedding, check_images
from jimm_linen.layers.embed import position_embedding
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.rope import patch_centers, patch_rope
from jimm_linen.models.base import Tower
from jimm_linen.models.dino.config import DINOv2Config, DINOv3Config
from jimm_linen.partitioning import constrain

ACT_EMBED = ("act_batch", "act_length", "act_embed")


class _DINO(Tower):
    """The pieces both DINO versions share, called from their `__call__`."""

    def _token_param(self, name: str, n: int, init) -> jax.Array:
        return self.param(name, nn.with_logical_partitioning(init, (None, None, "embed")),
                          (1, n, self.config.hidden_size), self.param_dtype)

    def _patches(self, images, bool_masked_pos):
        """Patch embeddings `[B, gh * gw, D]` (masked ones replaced by the mask token) and `(gh, gw)`."""
        cfg = self.config
        check_images(images, cfg.num_channels, cfg.patch_size)
        x = PatchEmbedding(cfg.patch_size, cfg.hidden_size, kernel_init=default_kernel_init(cfg.initializer_range),
                           dtype=self.dtype, param_dtype=self.param_dtype, name="embedding")(images)
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if cfg.use_mask_token:
            mask_token = self._token_param("mask_token", 1, nn.initializers.zeros_init())
            if bool_masked_pos is not None:
                if bool_masked_pos.shape != (b, gh * gw):
                    raise ValueError(f"bool_masked_pos has shape {bool_masked_pos.shape}, expected (batch, patches) "
                                     f"= {(b, gh * gw)}")
                x = jnp.where(bool_masked_pos[..., None], mask_token.astype(x.dtype), x)
        elif bool_masked_pos is not None:
            raise ValueError("bool_masked_pos needs a mask token; this config has use_mask_token=False")
        return x, (gh, gw)

    def _with_class_token(self, x):
        cls = self._token_param("cls", 1, default_kernel_init(self.config.initializer_range))
        return jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[2])), x], axis=1)

    def _with_registers(self, x, init):
        """Register tokens after the class token, before the patches."""
        n = self.config.num_register_tokens
        reg = self._token_param("registers", n, init)
        reg = jnp.broadcast_to(reg.astype(x.dtype), (x.shape[0], n, x.shape[2]))
        return jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)

    def _encode(self, x, train: bool, return_hidden_states: bool, rope=None):
        x = constrain(x, ACT_EMBED)
        encoded, per_layer = Encoder(self.config, **self.runtime(), name="Transformer")(
            x, None, not train, return_hidden_states, rope)
        return self.tower_output(encoded[:, 0], encoded, (x,) + (per_layer or ()), head=0, head_bias=False,
                                 init=None, return_hidden_states=return_hidden_states)


class DINOv2(_DINO):
    """HF `Dinov2Model` / `Dinov2WithRegistersModel` on NHWC float images: `apply(variables,
    images)` returns the pooled features (the class token after the final LayerNorm, HF's
    `pooler_output`); `return_hidden_states=True` returns a `TowerOutput`.

    Images of another size than `config.image_size` resize the position embeddings as HF does
    (`interpolate_pos_encoding=False` makes that an error instead). `bool_masked_pos`
    `[B, patches]` replaces those patch embeddings by the mask token.
    """

    config: DINOv2Config

    @nn.compact
    def __call__(self, images, train: bool = False, interpolate_pos_encoding: bool = True,
                 return_hidden_states: bool = False, bool_masked_pos=None):
        cfg = self.config
        x, (gh, gw) = self._patches(images, bool_masked_pos)
        x = self._with_class_token(x)
        x = x + position_embedding(self, gh, gw, interpolate_pos_encoding, default_kernel_init(cfg.initializer_range),
                                   n_prefix=1, antialias=cfg.interpolate_antialias).astype(x.dtype)
        if cfg.model_type == "dinov2_with_registers":
            x = self._with_registers(x, nn.initializers.zeros_init())
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, not train)
        return self._encode(x, train, return_hidden_states)

class DINOv3(_DINO):
    """HF `DINOv3ViTModel` on NHWC float images of any size divisible by the patch size:
    `apply(variables, images)` returns the pooled features (the class token after the final
    LayerNorm); `return_hidden_states=True` returns a `TowerOutput`. `bool_masked_pos`
    `[B, patches]` replaces those patch embeddings by the mask token. With `train=True` the
    patch coordinates are augmented as the config says, drawing from the "dropout" stream.
    `interpolate_pos_encoding` is accepted for the signature every vision model shares; RoPE
    needs no resizing.
    """

    config: DINOv3Config

    @nn.compact
    def __call__(self, images, train: bool = False, interpolate_pos_encoding: bool = True,
                 return_hidden_states: bool = False, bool_masked_pos=None):
        cfg = self.config
        x, (gh, gw) = self._patches(images, bool_masked_pos)
        x = self._with_registers(self._with_class_token(x), default_kernel_init(cfg.initializer_range))
        coords = patch_centers(gh, gw)
        if train:
            coords = self._augment(coords)
        return self._encode(x, train, return_hidden_states, patch_rope(coords, cfg.head_dim, cfg.rope_theta))

    def _augment(self, coords):
        """HF's `augment_patches_center_coordinates`: one random shift, jitter and rescale of all
        coordinates per call."""
        cfg = self.config
        if cfg.pos_embed_shift is None and cfg.pos_embed_jitter is None and cfg.pos_embed_rescale is None:
            return coords
        shift_key, jitter_key, rescale_key = jax.random.split(self.make_rng("dropout"), 3)
        coords = jnp.asarray(coords)
        if cfg.pos_embed_shift is not None:
            coords = coords + jax.random.uniform(shift_key, (1, 2), minval=-cfg.pos_embed_shift,
                                                 maxval=cfg.pos_embed_shift)
        for key, factor, shape in ((jitter_key, cfg.pos_embed_jitter, (1, 2)),
                                   (rescale_key, cfg.pos_embed_rescale, (1,))):
            if factor is not None:
                log = float(np.log(factor))
                coords = coords * jnp.exp(jax.random.uniform(key, shape, minval=-log, maxval=log))
        return coords
