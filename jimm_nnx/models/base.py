"""What every jimm_nnx model shares: `PretrainedModel` (a `jimm_linen` module and its variables
as one `nnx.Module`: `from_pretrained`, `from_config`, `save_pretrained`), the `rngs` argument
type, and jimm's attribute views (`_View`)."""

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
from jimm_linen.pretrained import checkpoint_config
from jimm_linen.models.vit import ViT, ViTConfig
from jimm_nnx.sharding import ShardingArg, ViTSharding, resolve_sharding

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


def _another_class(source, cls: type, family, config) -> str:
    """Why `cls` refuses the checkpoint at `source`, naming the jimm_nnx classes that load it."""
    import jimm_nnx

    fits = [f"jimm_nnx.{name}" for name in jimm_nnx.__all__ if isinstance(c := getattr(jimm_nnx, name), type)
            and issubclass(c, PretrainedModel) and c is not PretrainedModel and c._loads(family, config)]
    use = (f"use {', '.join(fits[:-1])} or {fits[-1]}" if len(fits) > 1 else f"use {fits[0]}" if fits else
           "no jimm_nnx class loads it")
    return (f"{source} holds a {family.model_type} checkpoint ({type(config).__name__}), which "
            f"jimm_nnx.{cls.__name__} does not load; {use}")


class _View:
    """jimm's attribute names for some of a bridged model's Variables (the same Variable
    objects, never copies: reading or writing through a view is reading or writing the model)."""

    def __init__(self, **items: Any):
        self.__dict__.update(items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.__dict__)})"


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
        family, config = checkpoint_config(model_name_or_path, use_pytorch)
        if not cls._loads(family, config):
            raise ValueError(_another_class(model_name_or_path, cls, family, config))
        rngs, placement = _default_rngs(rngs), resolve_sharding(sharding, cls.default_sharding)
        module, variables = cls._load(model_name_or_path, rngs, placement, attention_fn=attention_fn, dtype=dtype,
                                      param_dtype=param_dtype, remat_policy=_remat(use_gradient_checkpointing),
                                      tower=cls.tower, prefer_pytorch=use_pytorch, **kwargs)
        return cls.from_linen_variables(module, variables, placement=placement, rngs=rngs)

    @classmethod
    def _loads(cls, family, config) -> bool:
        """Whether `from_pretrained` takes a checkpoint of `family` whose `config.json` reads as
        `config`."""
        return cls._accepts(config)

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
