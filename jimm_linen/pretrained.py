"""`from_pretrained` / `save_pretrained` for every model family, HF checkpoint format."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen import checkpoint as ckpt
from jimm_linen.checkpoint import engine
from jimm_linen.layers import scan_to_loop
from jimm_linen.models.decoder import CausalLMConfig
from jimm_linen.models.image_text import CLIP, SigLIP, tower_module
from jimm_linen.registry import Family, families

FAMILIES: dict[str, Family] = families()


def family_of(model: nn.Module) -> Family:
    found = [fam for fam in FAMILIES.values() if isinstance(model, fam.module_cls) and fam.owns(model.config)]
    if not found:
        raise TypeError(f"no checkpoint family for {type(model).__name__} {getattr(model, 'config', '')!r:.120}")
    # A family whose module subclasses another's (Gemma 2's Gemma) is the nearer in the model's MRO.
    return min(found, key=lambda fam: type(model).__mro__.index(fam.module_cls))


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` names a local path rather than a hub id (`org/name` or `name`):
    a path object, or a string that is absolute, starts with `.` or `~`, ends with a separator
    or has more than one."""
    if not isinstance(name_or_path, str):
        return True
    name = name_or_path
    return (name.startswith(("/", ".", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, prefer_pytorch: bool = False) -> Path:
    """A local directory as is; otherwise an HF hub id through `huggingface_hub` (its cache,
    `HF_HUB_OFFLINE` and token settings apply). A local-looking path that does not exist is an
    error here, never a hub request. `prefer_pytorch` fetches a hub repo's PyTorch weights."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; from_pretrained takes a checkpoint directory, its .safetensors "
                         f"file or a hub id")
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: no such directory (a local path; hub ids look like 'org/name')")
    from huggingface_hub import snapshot_download

    repo = str(name_or_path)
    safetensors = ["config.json", "*.safetensors", "*.safetensors.index.json"]
    torch_files = ["config.json", "pytorch_model*.bin*"]
    # Besides the weights: a decoder's generation defaults and its tokenizer's files.
    extra = ["generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model",
             "*.tiktoken", "chat_template*"]
    safetensors, torch_files = safetensors + extra, torch_files + extra
    directory = Path(snapshot_download(repo, allow_patterns=torch_files if prefer_pytorch else safetensors))
    try:
        ckpt.weight_files(directory)
    except FileNotFoundError:  # the repo has the other format only
        directory = Path(snapshot_download(repo, allow_patterns=safetensors if prefer_pytorch else torch_files))
    return directory


def _checkpoint_files(name_or_path: str | os.PathLike, prefer_pytorch: bool) -> tuple[Path, list[Path] | None]:
    """(directory, weight files or None for the directory's own) for a directory, hub id or a
    single `.safetensors` file with its `config.json` beside it."""
    path = Path(name_or_path).expanduser()
    if not path.is_file() or path.suffix != ".safetensors":
        return resolve_checkpoint_dir(name_or_path, prefer_pytorch), None
    index = path.parent / ckpt.hf_files.SAFE_INDEX
    if index.is_file() and path.name in set(ckpt.read_json(index).get("weight_map", {}).values()):
        raise ValueError(f"{path} is one shard of the checkpoint in {path.parent} ({index.name} names it); "
                         f"pass the directory")
    return path.parent, [path]


def checkpoint_config(name_or_path: str | os.PathLike, prefer_pytorch: bool = False) -> tuple[Family, Any]:
    """The family and config of a checkpoint (a directory, its `.safetensors` file or a hub id)
    as `from_pretrained` reads them, before it reads any weight."""
    return read_config(_checkpoint_files(name_or_path, prefer_pytorch)[0])


def read_config(directory: Path) -> tuple[Family, Any]:
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no config.json in {directory}")
    hf = ckpt.read_json(cfg_file)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r} in {cfg_file}; jimm supports {sorted(FAMILIES)}")
    fam = FAMILIES[model_type]
    config = fam.from_hf(hf)
    generation_file = directory / "generation_config.json"
    if isinstance(config, CausalLMConfig) and generation_file.exists():
        config = dataclasses.replace(config, generation=generation_defaults(ckpt.read_json(generation_file)))
    return fam, config


def generation_defaults(hf: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`generation_config.json` as sorted `(key, value)` pairs (lists as tuples, so that the
    config stays hashable); HF's bookkeeping keys dropped."""
    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, list) else v
    return tuple(sorted((k, freeze(v)) for k, v in hf.items() if k not in ("transformers_version", "_from_model_config")))


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    attention_fn: Callable | None = None,
    scan: bool = True,
    remat_policy: str = "none",
    dont_load: Sequence[str] = (),
    rng: jax.Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = "fsdp",
    tower: str | None = None,
    boxed: bool = False,
    check_finite: bool = False,
    shardings: engine.ShardingFn | None = None,
    prefer_pytorch: bool = False,
    **config_overrides: Any,
) -> tuple[nn.Module, dict]:
    """Load an HF checkpoint (directory, its single `.safetensors` file, or hub id) as
    `(module, variables)`. `prefer_pytorch` reads `pytorch_model.bin` where both formats exist.

    `param_dtype=None` keeps the stored dtype (bf16 stays bf16). `dont_load` lists regexes
    over Linen parameter paths (e.g. `["head/.*"]`) that are initialised from `rng` instead of
    read (a fine-tuning head with `num_labels=...` among `config_overrides`); every other
    missing, unexpected or mis-shaped key is an error. With `mesh`, each parameter is read
    straight into its sharding under `rules`, each host reading only the slices its devices
    hold; `shardings` (`(logical names, shape) -> Sharding`) replaces `mesh` and `rules`.

    `tower="vision"` / `"text"` builds one tower of a CLIP / SigLIP checkpoint (the `ViT` or
    `TextTransformer`, CLIP's with its projection `head`, like HF's `CLIP*ModelWithProjection`),
    reading only that tower's tensors; a single-tower checkpoint of that tower loads as is.
    `boxed=True` returns the arrays in their `nn.LogicallyPartitioned` boxes (logical axis
    names). `check_finite=True` raises `CheckpointError` naming every tensor with NaN or inf.
    """
    directory, files = _checkpoint_files(name_or_path, prefer_pytorch)
    fam, config = read_config(directory)
    with ckpt.StateReader(directory, prefer_pytorch, files) as reader:
        config = fam.adapt_config(config, reader.shapes)
        if "num_labels" in config_overrides and "id2label" not in config_overrides:
            config_overrides["id2label"] = None  # the checkpoint's label names are for its own head
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        model = fam.module_cls(config, attention_fn=attention_fn, dtype=dtype,
                               param_dtype=param_dtype or jnp.float32, scan=scan, remat_policy=remat_policy)
        keymap = fam.keymap(config)
        if tower is not None:
            model, keymap = _one_tower(directory, fam, model, keymap, tower)
        target = engine.Target.of(model, *model.config.dummy_inputs())
        plan = ckpt.plan_load(reader.shapes, keymap, target.loop_shapes, dont_load)
        if shardings is None and mesh is not None:
            from jimm_linen.partitioning import leaf_sharding
            shardings = leaf_sharding(mesh, rules)
        variables = engine.load(target, reader, plan, rng=rng, param_dtype=param_dtype, sharding=shardings,
                                boxed=boxed, check_finite=check_finite, total_bytes=reader.total_bytes)
    return model, variables


def _one_tower(directory: Path, fam: Family, model: nn.Module, keymap: ckpt.KeyMap, tower: str):
    """The tower's module and key table; the other tower's keys are ignored, never read."""
    if isinstance(model, (CLIP, SigLIP)):
        key, module = tower_module(model, tower)
        return module, keymap.subtree(f"{key}/")
    model_type = fam.model_type
    if model_type.endswith(f"_{tower}_model"):
        return model, keymap
    raise ValueError(f"tower={tower!r}: {directory} holds a {model_type} checkpoint, which has no {tower} tower")


def save_pretrained(model: nn.Module, variables: dict, out_dir: str | os.PathLike,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `config.json` + safetensors that `transformers` `from_pretrained` reads."""
    fam = family_of(model)
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    if model.scan:
        params = scan_to_loop(params)
    hf = fam.to_hf(model.config)  # first: a config HF cannot express fails before any file is written
    state = ckpt.linen_to_hf(ckpt.flatten_tree(params), fam.keymap(model.config))
    out = Path(out_dir)
    ckpt.write_state_dict(state, out, max_shard_bytes)
    dtypes = {str(a.dtype) for a in state.values()}
    hf["dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    if isinstance(model.config, CausalLMConfig):
        cfg = model.config
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf["eos_token_id"], "pad_token_id": cfg.pad_token_id,
               **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.generation}}
        gen = {k: v for k, v in gen.items() if v is not None}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True))
    return out
