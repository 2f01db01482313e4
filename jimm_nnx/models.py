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
from jimm_linen.models.vit import ViT, ViTConfig
from jimm_linen.models.vit import hf as vit_hf
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


class VisionTransformer(bridge.LinenModule):
    """`jimm_linen.ViT` as an `nnx.Module`: `model(images)` on NHWC float images gives logits
    (or pooled features for a checkpoint without a classifier head).

    Build it with `from_pretrained` (an HF ViT checkpoint directory or hub id) or
    `from_config` (random init). `nnx.state(model, nnx.Param)` is the Linen params tree, so
    `bridge.to_linen_variables(model)` and `jimm_linen` checkpoints work on it unchanged.
    """

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, attention_fn: Callable | None = None,
                        dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        sharding: ShardingArg = None, use_gradient_checkpointing: bool | str = False,
                        rngs: RngsArg = None, **kwargs: Any) -> VisionTransformer:
        """Load an HF ViT checkpoint. `param_dtype=None` keeps the stored dtype. `sharding`:
        `Sharding(rules, mesh)`, `NoSharding()` or a preset name; the default shards FSDP-style
        on the current mesh if one is set. Each parameter is read straight into its sharding.
        `kwargs` go to `jimm_linen.from_pretrained` (`dont_load=`, `scan=`, config overrides
        such as `num_labels=`); `rngs` initialises `dont_load` parameters and drives dropout."""
        rngs = _default_rngs(rngs)
        placement = resolve_sharding(sharding)
        module, variables = jimm_linen.from_pretrained(
            name_or_path, dtype=dtype, param_dtype=param_dtype, attention_fn=attention_fn,
            remat_policy=_remat(use_gradient_checkpointing), rng=bridge.rng_streams(rngs)["params"],
            mesh=placement.mesh, rules=placement.rules, **kwargs)
        if not isinstance(module, ViT):
            raise ValueError(f"{name_or_path} holds a {type(module).__name__}, not a ViT")
        return cls.from_linen_variables(module, variables, placement=placement, rngs=rngs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ViTConfig, *, rngs: RngsArg = None,
                    attention_fn: Callable | None = None, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32, sharding: ShardingArg = None,
                    use_gradient_checkpointing: bool | str = False, scan: bool = True,
                    **config_overrides: Any) -> VisionTransformer:
        """A randomly initialised ViT from an HF `config.json` dict (or a `ViTConfig`), every
        parameter created directly in its sharding. `rngs` is an `nnx.Rngs` (default
        `nnx.Rngs(0)`, fresh per call), or a key or seed to initialise exactly like
        `ViT.init(key, ...)`; it also drives dropout. `config_overrides` replace config fields."""
        config = _vit_config(config, config_overrides)
        module = ViT(config, attention_fn=attention_fn, dtype=dtype, param_dtype=param_dtype,
                     scan=scan, remat_policy=_remat(use_gradient_checkpointing))
        return cls.wrap(module, *vit_hf.dummy_inputs(config), rngs=_default_rngs(rngs),
                        placement=resolve_sharding(sharding))

    @property
    def config(self) -> ViTConfig:
        return self.linen_module.config

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write `config.json` + safetensors (the files `jimm_linen.save_pretrained` writes,
        which `transformers` loads)."""
        return jimm_linen.save_pretrained(self.linen_module, bridge.to_linen_variables(self), out_dir, **kwargs)

    def __call__(self, images: jax.Array, train: bool = False, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False, *, rngs: RngsArg = None):
        """Logits, or a `jimm_linen.TowerOutput` with `return_hidden_states=True`. Dropout (when
        `train=True`) draws from `rngs`, by default the model's own."""
        if not train and rngs is None:
            rngs = {}  # evaluation needs no random streams; don't advance the model's
        return super().__call__(images, rngs=rngs, train=train, interpolate_pos_encoding=interpolate_pos_encoding,
                                return_hidden_states=return_hidden_states)


def _vit_config(config: Mapping[str, Any] | ViTConfig, overrides: dict[str, Any]) -> ViTConfig:
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):  # a transformers.ViTConfig
        config = config.to_dict()
    if isinstance(config, Mapping):
        config = ViTConfig.from_hf_config(dict(config))
    elif not isinstance(config, ViTConfig):
        raise TypeError(f"config must be an HF config dict or a ViTConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config
