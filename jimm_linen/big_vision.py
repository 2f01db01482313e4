"""big_vision `.npz` checkpoints in jimm: SigLIP (`two_towers`) and plain ViT.

jimm's Linen parameter names are big_vision's (`embedding`, `cls`, `pos_embedding`,
`Transformer/encoderblock[_i]/...`, `MAPHead_0`, `pre_logits`, `head`; for SigLIP `img/...`,
`txt/Embed_0`, `txt/pos_embedding`, `txt/Encoder_0/...`, `txt/head`, `t`, `b`), with the same
shapes: attention kernels `(embed, heads, head_dim)` / `(heads, head_dim, embed)`, Dense kernels
`(in, out)`, the patch convolution `(p, p, channels, embed)`. Loading is therefore a strict
name-by-name match; the differences handled here are:

- the file: `.npz` key prefixes and subtrees (`subtree="img"` or `"file.npz:img"` reads one part,
  e.g. a two-towers image tower as a ViT), bf16, the scanned or loop encoder layout (a file may
  hold either, whatever `scan` asks for) and old checkpoint layouts are read and repaired in
  `jimm_linen.checkpoint.npz`.
- class-token ViTs (`pool_type="tok"`): big_vision adds `pos_embedding` `(1, N, D)` to the patches
  before prepending `cls`; jimm (like HF) prepends first and adds `(1, N + 1, D)`. A `(1, N, D)`
  table loads with a zero row for the class token (exact); an old-style `(1, N + 1, D)` table
  loads as is.
- `posemb="sincos2d"` (no parameter in big_vision): the fixed 2-D sin-cos table is computed and
  becomes jimm's `pos_embedding` (trainable in jimm; `interpolate_pos_encoding` resizes it
  bicubically instead of recomputing it).
- SigLIP text towers without a head (`out_dim=(None, None)`): jimm's SigLIP always has one, so it
  gets an identity `txt/head` (exact).

Numerics: big_vision's MLPs use `nn.gelu` (tanh approximation; HF `gelu_pytorch_tanh`) and Flax's
LayerNorm eps 1e-6; the configs built here say so. big_vision normalises embeddings as
`z / (|z| + 1e-8)`, jimm and HF as `z / |z|` (a relative difference of about 1e-8).

SigLIP checkpoints (big_vision's `SigLIP_demo.ipynb` configs; HF names as in transformers'
`convert_siglip_to_hf.py`). All: `image=dict(variant, pool_type="map")`,
`text=dict(variant, vocab_size)`, `out_dim=(None, width)`, `bias_init=-10`,
`temperature_init=10`; gelu tanh, eps 1e-6, MAP head, no image projection, text `head` Dense
with bias, `t` = HF `logit_scale`, `b` = HF `logit_bias`.

| big_vision file                       | image, res     | text   | width | len | vocab  | HF name                        |
|---------------------------------------|----------------|--------|-------|-----|--------|--------------------------------|
| webli_en_b16_224_63724782.npz         | B/16, 224      | B      | 768   | 64  | 32000  | siglip-base-patch16-224        |
| webli_en_b16_256_60500360.npz         | B/16, 256      | B      | 768   | 64  | 32000  | siglip-base-patch16-256        |
| webli_en_b16_384_68578854.npz         | B/16, 384      | B      | 768   | 64  | 32000  | siglip-base-patch16-384        |
| webli_en_b16_512_68580893.npz         | B/16, 512      | B      | 768   | 64  | 32000  | siglip-base-patch16-512        |
| webli_en_l16_256_60552751.npz         | L/16, 256      | L      | 1024  | 64  | 32000  | siglip-large-patch16-256       |
| webli_en_l16_384_63634585.npz         | L/16, 384      | L      | 1024  | 64  | 32000  | siglip-large-patch16-384       |
| webli_en_so400m_224_57633886.npz      | So400m/14, 224 | So400m | 1152  | 16  | 32000  | siglip-so400m-patch14-224      |
| webli_en_so400m_384_58765454.npz      | So400m/14, 384 | So400m | 1152  | 64  | 32000  | siglip-so400m-patch14-384      |
| webli_i18n_b16_256_66117334.npz       | B/16, 256      | B      | 768   | 64  | 250000 | siglip-base-patch16-256-i18n   |
| webli_i18n_so400m_16_256_78061115.npz | So400m/16, 256 | So400m | 1152  | 64  | 250000 | siglip-so400m-patch16-256-i18n |

(Files under gs://big_vision/siglip/. `width`: both towers' width and the text head's
`out_dim[1]`; `len`: the text length, HF `max_position_embeddings`.) HF's script unstacks a
scanned `img/Transformer/encoderblock` in three of these files (b16_512, so400m_224,
i18n_so400m_16_256); jimm reads either layout. For the two i18n files (image 256, patch 16, vocab
250000) it maps no `txt/head` and writes an identity head instead, although the demo's config
says `out_dim=(None, width)`: if a file has no `txt/head`, use `out_dim=(None, None)` and jimm
does the same.

Plain ViT (`config.model_name = "vit"`): `pool_type="tok"` -> class-token pooling (HF
`ViTForImageClassification` with a head and no `rep_size`, HF `ViTModel` with `rep_size=True`
and no head: `pre_logits` is HF's pooler); `"gap"` -> jimm `pooling="mean"`, `"map"` ->
`pooling="map"` (jimm only: HF ViT has class-token pooling alone). `pool_type="0"` and `"none"`
have no jimm equivalent. The written HF config says `hidden_act="gelu_pytorch_tanh"`,
`layer_norm_eps=1e-6` (what big_vision computes); a `sincos2d` table is stored as HF's learned
`position_embeddings` (exact at the trained resolution).

Usage::

    model, variables = load_npz("webli_en_b16_224_63724782.npz", dict(
        image=dict(variant="B/16", pool_type="map"), text=dict(variant="B", vocab_size=32000),
        out_dim=(None, 768), bias_init=-10.0, temperature_init=10.0))   # image size, text length: from the file
    jimm_linen.save_pretrained(model, variables, "siglip-base-patch16-224/")   # transformers.SiglipModel reads it
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen import checkpoint as ckpt
from jimm_linen.checkpoint import engine
from jimm_linen.checkpoint import CheckpointError, Rule, Transform, npz
from jimm_linen.checkpoint.npz import NpzReader
from jimm_linen.models.image_text import SigLIP, SigLIPConfig, TextConfig
from jimm_linen.models.vit import ViT, ViTConfig
from jimm_linen.models.vit.config import VARIANTS

__all__ = ["NpzReader", "load_npz", "posemb_sincos_2d", "siglip_config", "vit_config"]

TEXT_MODEL = "proj.image_text.text_transformer"

# Sizes big_vision's `decode_variant` knows beyond jimm's shared table (big_vision/models/vit.py).
_EXTRA_VARIANTS = {
    "g-opt": dict(hidden_size=1536, num_hidden_layers=40, intermediate_size=6144, num_attention_heads=16),
    "G-opt": dict(hidden_size=1536, num_hidden_layers=48, intermediate_size=8192, num_attention_heads=16),
}
# big_vision's names for the sizes, and the tower defaults of its `_Model` classes.
_SIZE_NAMES = dict(width="hidden_size", depth="num_hidden_layers", mlp_dim="intermediate_size",
                   num_heads="num_attention_heads")
_VIT_DEFAULTS = dict(width=768, depth=12, mlp_dim=None, num_heads=12)
_TEXT_DEFAULTS = dict(width=512, depth=12, mlp_dim=2048, num_heads=8)
# Settings that change how a model trains or runs, not its parameters or outputs.
_RUNTIME_KEYS = {"scan", "remat_policy", "dtype_mm", "head_zeroinit"}
_VIT_KEYS = {"variant", "num_classes", "patch_size", *_SIZE_NAMES, "posemb", "rep_size", "dropout", "pool_type",
             *_RUNTIME_KEYS}
_TEXT_KEYS = {"variant", *_SIZE_NAMES, "dropout", "vocab_size", "pool_type", *_RUNTIME_KEYS}
_TWO_TOWERS_KEYS = {"image", "text", "image_model", "text_model", "out_dim", "temperature_init", "bias_init"}
_POOLINGS = {"tok": "cls", "gap": "mean", "map": "map"}

# big_vision's nn.gelu default (approximate=True) and Flax's LayerNorm epsilon.
_NUMERICS = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


# --- big_vision model configs -> jimm configs ---------------------------------------------

def _as_dict(cfg: Any, what: str) -> dict[str, Any]:
    """A plain dict from a dict, a Mapping or an `ml_collections.ConfigDict`."""
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what}: expected a dict or ConfigDict, got {type(cfg).__name__}")
    return dict(cfg)


def _check_keys(cfg: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{what}: unsupported big_vision field(s) {unknown}; jimm reads {sorted(allowed)}")


def _sizes(cfg: dict, defaults: dict[str, Any], what: str) -> tuple[dict[str, int], int | None]:
    """Tower sizes in jimm's field names, and the patch size a "B/16"-style variant carries;
    explicit fields win over the variant, as in big_vision's `{**decode_variant(variant), **kw}`."""
    sizes, patch = dict(defaults), None
    variant = cfg.get("variant")
    if variant is not None:
        name, _, p = str(variant).partition("/")
        table = {**VARIANTS, **_EXTRA_VARIANTS}
        if name not in table or (p and not p.isdigit()):
            raise ValueError(f"{what}: unknown variant {variant!r}; expected '<size>[/<patch>]' with size in "
                             f"{list(table)}")
        ours = table[name]
        sizes.update({bv: ours[jimm] for bv, jimm in _SIZE_NAMES.items()})
        patch = int(p) if p else None
    sizes.update({k: cfg[k] for k in _SIZE_NAMES if k in cfg})
    if sizes["mlp_dim"] is None:
        sizes["mlp_dim"] = 4 * sizes["width"]
    return {_SIZE_NAMES[k]: int(v) for k, v in sizes.items()}, patch


def _patch_size(cfg: dict, from_variant: int | None, what: str) -> int:
    patch = cfg.get("patch_size", from_variant if from_variant is not None else 16)
    if isinstance(patch, (tuple, list)):
        if len(patch) != 2 or patch[0] != patch[1]:
            raise ValueError(f"{what}: patch_size {patch} is not square; jimm's ViT has square patches")
        patch = patch[0]
    return int(patch)


def _vit(cfg: dict, *, image_size: int | None, num_classes: int | None, num_channels: int,
         what: str) -> tuple[ViTConfig, str]:
    _check_keys(cfg, _VIT_KEYS, what)
    sizes, patch = _sizes(cfg, _VIT_DEFAULTS, what)
    pool = cfg.get("pool_type", "gap")
    if pool not in _POOLINGS:
        raise ValueError(f"{what}: pool_type {pool!r} has no jimm equivalent; jimm reads {sorted(_POOLINGS)} "
                         "('0' pools the first patch token of a model without a class token)")
    posemb = cfg.get("posemb", "learn")
    if posemb not in ("learn", "sincos2d"):
        raise ValueError(f"{what}: unknown posemb {posemb!r}; big_vision has 'learn' and 'sincos2d'")
    if image_size is None:
        raise ValueError(f"{what}: image_size is needed (big_vision configs do not hold it)")
    rep = cfg.get("rep_size", False)
    if "num_classes" in cfg:
        num_classes = cfg["num_classes"]
    config = ViTConfig(
        **sizes, image_size=int(image_size), patch_size=_patch_size(cfg, patch, what), num_channels=num_channels,
        **_NUMERICS, hidden_dropout_prob=float(cfg.get("dropout", 0.0)), pooling=_POOLINGS[pool],
        num_labels=int(num_classes or 0), pooler=bool(rep),
        pooler_output_size=(sizes["hidden_size"] if rep is True else int(rep)) if rep else None, pooler_act="tanh")
    return config, posemb


def vit_config(model_cfg: Any, *, image_size: int, num_classes: int | None = None,
               num_channels: int = 3) -> ViTConfig:
    """A big_vision ViT `config.model` (`variant`, `pool_type`, `rep_size`, `num_classes`, ...; a
    dict or ConfigDict) as a `ViTConfig`. `num_classes` (big_vision's trainer passes
    `config.num_classes`) is used when the dict has none; 0 or None means no head.

    `posemb="sincos2d"` has no config field in jimm: `load_npz` with the big_vision dict fills it in.
    """
    return _vit(_as_dict(model_cfg, "vit config"), image_size=image_size, num_classes=num_classes,
                num_channels=num_channels, what="vit config")[0]


@dataclasses.dataclass(frozen=True)
class _Options:
    """What a big_vision config says about the checkpoint beyond jimm's config."""

    posemb: str = "learn"
    text_head: bool = True


def _siglip(model_cfg: Any, *, image_size: int | None, text_length: int | None,
            num_channels: int) -> tuple[SigLIPConfig, _Options]:
    cfg = _as_dict(model_cfg, "two_towers config")
    _check_keys(cfg, _TWO_TOWERS_KEYS, "two_towers config")
    if cfg.get("image_model", "vit") != "vit":
        raise ValueError(f"image_model {cfg['image_model']!r}: jimm reads SigLIP with big_vision's 'vit' image tower")
    if cfg.get("text_model", TEXT_MODEL) != TEXT_MODEL:
        raise ValueError(f"text_model {cfg['text_model']!r}: jimm reads SigLIP with big_vision's {TEXT_MODEL!r}")
    out_dim = cfg.get("out_dim", 128)  # two_towers.Model's default
    img_out, txt_out = (out_dim, out_dim) if not isinstance(out_dim, (tuple, list)) else tuple(out_dim)
    if img_out:
        raise ValueError(f"out_dim {out_dim}: an image projection (out_dim[0] = {img_out}) is not SigLIP's "
                         "structure (HF SiglipModel has none); use out_dim=(None, text_dim)")
    if cfg.get("bias_init") is None:
        raise ValueError("bias_init is None: a two-towers model without the learned logit bias `b` is a "
                         "softmax-contrastive (LiT/CLIP-style) model, not SigLIP")
    image, text = _as_dict(cfg.get("image"), "image config"), _as_dict(cfg.get("text"), "text config")
    for tower, name in ((image, "image"), (text, "text")):
        if "num_classes" in tower:
            raise ValueError(f"{name} config: num_classes comes from out_dim in a two_towers model")
    if image.get("pool_type", "gap") != "map":
        raise ValueError(f"image pool_type {image.get('pool_type', 'gap')!r}: SigLIP pools images with a MAP "
                         "head (pool_type='map')")
    if image.get("rep_size"):
        raise ValueError("image rep_size: SigLIP's image tower has no pre_logits layer")
    vision, posemb = _vit(image, image_size=image_size, num_classes=0, num_channels=num_channels,
                          what="image config")

    _check_keys(text, _TEXT_KEYS, "text config")
    sizes, patch = _sizes(text, _TEXT_DEFAULTS, "text config")
    if patch is not None:
        raise ValueError(f"text config: variant {text['variant']!r} has a patch size; text variants are sizes only")
    if text.get("pool_type", "last") != "last":
        raise ValueError(f"text pool_type {text['pool_type']!r}: jimm's SigLIP text tower pools the last token "
                         "(pool_type='last')")
    if text_length is None:
        raise ValueError("text_length is needed (big_vision configs do not hold it)")
    text_cfg = TextConfig(**sizes, vocab_size=int(text.get("vocab_size", 32_000)),
                          max_position_embeddings=int(text_length), **_NUMERICS,
                          projection_size=int(txt_out or sizes["hidden_size"]))
    config = SigLIPConfig(text=text_cfg, vision=vision,
                          logit_scale_init=math.log(float(cfg.get("temperature_init", 1.0))),
                          logit_bias_init=float(cfg["bias_init"]))
    return config, _Options(posemb=posemb, text_head=bool(txt_out))


def siglip_config(model_cfg: Any, *, image_size: int, text_length: int, num_channels: int = 3) -> SigLIPConfig:
    """A big_vision two_towers `config.model` (`image`, `text`, `out_dim`, `bias_init`,
    `temperature_init`, `image_model`, `text_model`; a dict or ConfigDict) as a `SigLIPConfig`.
    `text_length` is the tokenizer's `max_len` (the length of `txt/pos_embedding`).

    A text tower without a head (`out_dim=(None, None)`) gets `projection_size = width`;
    `load_npz` with the big_vision dict fills that head with the identity.
    """
    return _siglip(model_cfg, image_size=image_size, text_length=text_length, num_channels=num_channels)[0]


def _is_two_towers(cfg: dict) -> bool:
    return bool(set(cfg) & _TWO_TOWERS_KEYS)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """big_vision's fixed 2-D position embedding (MoCo v3): `(1, h*w, width)` float32, row-major
    over the grid, features `[sin(x*w_k), cos(x*w_k), sin(y*w_k), cos(y*w_k)]` with
    `w_k = temperature ** (-k / (width/4 - 1))`."""
    if width % 4 or width < 8:
        raise ValueError(f"sincos2d position embeddings need a width divisible by 4 and at least 8, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = (np.arange(width // 4) / (width // 4 - 1)).astype(np.float32)
    omega = (1.0 / np.float32(temperature) ** omega).astype(np.float32)
    y = y.reshape(-1, 1).astype(np.float32) * omega[None]
    x = x.reshape(-1, 1).astype(np.float32) * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)


# --- synthetic entries and the key table ---------------------------------------------------

def _synthesise(entries: dict[str, npz.Entry], model: nn.Module, options: _Options, vit_prefix: str) -> None:
    """Parameters big_vision does not store but jimm has: a sincos position table, an identity text head."""
    ref = entries.get(f"{vit_prefix}embedding/kernel")
    dtype = ref.dtype if ref is not None else np.dtype(np.float32)
    problems = []
    if options.posemb == "sincos2d":
        key = f"{vit_prefix}pos_embedding"
        if key in entries:
            problems.append(f"unexpected keys: [{key}] (posemb='sincos2d' computes the position embeddings)")
        else:
            v = model.config.vision if isinstance(model, SigLIP) else model.config
            entries[key] = npz.Entry.constant(posemb_sincos_2d(v.grid_size, v.grid_size, v.hidden_size).astype(dtype))
    if isinstance(model, SigLIP) and not options.text_head:
        heads = sorted(k for k in entries if k.startswith("txt/head/"))
        if heads:
            problems.append(f"unexpected keys: {heads} (the big_vision config gives the text tower no head: "
                            "out_dim[1] is None)")
        elif model.config.text.projection_size != model.config.text.hidden_size:
            raise ValueError(f"an identity text head needs projection_size == text hidden_size, got "
                             f"{model.config.text.projection_size} and {model.config.text.hidden_size}")
        else:
            width = model.config.text.hidden_size
            entries["txt/head/kernel"] = npz.Entry.constant(np.eye(width, dtype=dtype))
            entries["txt/head/bias"] = npz.Entry.constant(np.zeros((width,), dtype))
    if problems:
        raise CheckpointError("checkpoint does not match the model; " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class _PrependZeroRow(Transform):
    """big_vision `pos_embedding` `(1, N, D)` (added before the class token is prepended) ->
    jimm `(1, N + 1, D)` with a zero row for the class token."""

    def hf_shape(self, shape):
        return (shape[0], shape[1] - 1, *shape[2:])

    def to_linen(self, x, shape):
        return np.concatenate([np.zeros((x.shape[0], 1, *x.shape[2:]), x.dtype), x], axis=1)

    def to_hf(self, y):
        raise NotImplementedError("jimm writes HF checkpoints, not big_vision ones")


def _keymap(expected: Mapping[str, tuple[int, ...]], entries: Mapping[str, npz.Entry], model: nn.Module,
            vit_prefix: str) -> ckpt.KeyMap:
    """Identity rules (big_vision key == jimm path, loop layout), one per parameter kind."""
    v = model.config.vision if isinstance(model, SigLIP) else model.config
    pos = f"{vit_prefix}pos_embedding"
    rules = {}
    for path in expected:
        template = re.sub(r"(^|/)encoderblock_\d+/", r"\1encoderblock_{i}/", path)
        transform = ckpt.IDENTITY
        if (path == pos and v.pooling == "cls" and pos in entries
                and entries[pos].shape[1:2] == (expected[pos][1] - 1,)):
            transform = _PrependZeroRow()
        rules[template] = Rule(template, template, transform)
    return ckpt.KeyMap(rules.values())


def _hints(entries: Mapping[str, npz.Entry], expected: Mapping[str, tuple[int, ...]], model: nn.Module,
           vit_prefix: str) -> str:
    out = []
    txt = entries.get("txt/pos_embedding")
    if txt is not None and "txt/pos_embedding" in expected and txt.shape != tuple(expected["txt/pos_embedding"]):
        length = txt.shape[1] if len(txt.shape) == 3 else "?"
        out.append(f"the text length of a big_vision checkpoint is the length of txt/pos_embedding ({length}); "
                   f"the model has max_position_embeddings={model.config.text.max_position_embeddings}: build "
                   f"the config with text_length={length}")
    img = entries.get(f"{vit_prefix}pos_embedding")
    want = expected.get(f"{vit_prefix}pos_embedding")
    v = model.config.vision if isinstance(model, SigLIP) else model.config
    fits = {want[1], want[1] - 1} if want is not None and v.pooling == "cls" else {want[1] if want else None}
    if img is not None and want is not None and (len(img.shape) != 3 or img.shape[1] not in fits):
        out.append(f"{vit_prefix}pos_embedding has {img.shape[1] if len(img.shape) > 1 else '?'} positions; "
                   f"image_size={v.image_size} with patch_size={v.patch_size} needs {v.grid_size ** 2}")
    return "".join(f" Hint: {h}." for h in out)


# --- models -------------------------------------------------------------------------------

def _infer_image_size(entries, vit_prefix: str, cfg: dict) -> int | None:
    pos = entries.get(f"{vit_prefix}pos_embedding")
    if pos is None or len(pos.shape) != 3:
        return None
    _, patch = _sizes({k: cfg[k] for k in ("variant",) if k in cfg}, _VIT_DEFAULTS, "vit config")
    patch = _patch_size(cfg, patch, "vit config")
    n = pos.shape[1]
    for tokens in (n, n - 1) if cfg.get("pool_type", "gap") == "tok" else (n,):
        g = math.isqrt(max(tokens, 0))
        if g * g == tokens and g:
            return g * patch
    raise CheckpointError(f"{vit_prefix}pos_embedding {pos.shape} is not a square grid of positions; "
                          "pass image_size=")


def _resolve(model, entries, *, image_size, text_length, num_classes, num_channels, posemb, text_head,
             scan, dtype, param_dtype, attention_fn, remat_policy) -> tuple[nn.Module, _Options]:
    """The jimm module to load into, and what the config says the file holds."""
    if isinstance(model, (SigLIP, ViT)):
        return model, _Options(posemb or "learn", True if text_head is None else text_head)
    kw = dict(attention_fn=attention_fn, dtype=dtype, param_dtype=param_dtype or jnp.float32, scan=scan,
              remat_policy=remat_policy)
    if isinstance(model, SigLIPConfig):
        return SigLIP(model, **kw), _Options(posemb or "learn", True if text_head is None else text_head)
    if isinstance(model, ViTConfig):
        return ViT(model, **kw), _Options(posemb or "learn", True)
    cfg = _as_dict(model, "model")
    if posemb is not None or text_head is not None:
        raise ValueError("posemb= and text_head= are for jimm configs; a big_vision config says them itself")
    if _is_two_towers(cfg):
        image = _as_dict(cfg.get("image"), "image config")
        if image_size is None:
            image_size = _infer_image_size(entries, "img/", {**image, "pool_type": "map"})
        if text_length is None and "txt/pos_embedding" in entries and len(entries["txt/pos_embedding"].shape) == 3:
            text_length = entries["txt/pos_embedding"].shape[1]
        config, options = _siglip(cfg, image_size=image_size, text_length=text_length, num_channels=num_channels)
        return SigLIP(config, **kw), options
    if image_size is None:
        image_size = _infer_image_size(entries, "", cfg)
    if num_classes is None and "num_classes" not in cfg:
        num_classes = entries["head/bias"].shape[0] if "head/bias" in entries else 0
    config, posemb = _vit(cfg, image_size=image_size, num_classes=num_classes, num_channels=num_channels,
                          what="vit config")
    return ViT(config, **kw), _Options(posemb, True)


def load_npz(
    path: str | Path,
    model: Any,
    *,
    scan: bool = True,
    image_size: int | None = None,
    text_length: int | None = None,
    num_classes: int | None = None,
    num_channels: int = 3,
    posemb: str | None = None,
    text_head: bool | None = None,
    subtree: str | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    attention_fn: Callable | None = None,
    remat_policy: str = "none",
    dont_load: Sequence[str] = (),
    rng: jax.Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = "fsdp",
) -> tuple[nn.Module, dict]:
    """Load a big_vision `.npz` as `(module, variables)` for jimm's `SigLIP` or `ViT`.

    `model` is one of:
    - a big_vision `config.model` (dict or ConfigDict): two_towers (has `image`/`text`/`out_dim`/
      `bias_init`/...) -> `SigLIP`, else a ViT. What it leaves out is read from the file's shapes
      unless given: `image_size` (from `pos_embedding`; needed with `posemb="sincos2d"`),
      `text_length` (from `txt/pos_embedding`), and for a ViT `num_classes` (from `head/bias`; 0
      without a head).
    - a `SigLIPConfig` / `ViTConfig` (with `posemb="sincos2d"` or `text_head=False` where the file
      holds no position table / text head).
    - a `SigLIP` / `ViT` module, used as is (its `scan`, dtypes and `attention_fn`).

    The file may be scanned or not, with or without the `params/` prefix; `subtree` (or
    `"file.npz:img"`) reads a part. Strict like `from_pretrained`: every missing, unexpected and
    mis-shaped key raises `CheckpointError` naming it; `dont_load` (regexes over jimm paths in the
    loop layout) leaves parameters to their initialisers (from `rng`), e.g. a new `head`.
    `param_dtype=None` keeps the stored dtype (bf16 stays bf16). With `mesh`, each parameter is
    placed on its sharding under `rules` when it is read.
    """
    path, subtree = npz.split_path(path, subtree)
    with NpzReader(path) as reader:
        entries = npz.file_entries(reader, subtree)
        two_towers = isinstance(model, (SigLIP, SigLIPConfig)) or (
            not isinstance(model, (ViT, ViTConfig)) and _is_two_towers(_as_dict(model, "model")))
        vit_prefix = "img/" if two_towers else ""
        entries = npz.repair_old(entries, vit_prefix, text=two_towers)
        module, options = _resolve(model, entries, image_size=image_size, text_length=text_length,
                                   num_classes=num_classes, num_channels=num_channels, posemb=posemb,
                                   text_head=text_head, scan=scan, dtype=dtype, param_dtype=param_dtype,
                                   attention_fn=attention_fn, remat_policy=remat_policy)
        cfg = module.config
        if two_towers:
            encoders = {"img/Transformer/": cfg.vision.num_hidden_layers, "txt/Encoder_0/": cfg.text.num_hidden_layers}
        else:
            encoders = {"Transformer/": cfg.num_hidden_layers}
        entries = npz.unscan(entries, encoders)
        _synthesise(entries, module, options, vit_prefix)

        target = engine.Target.of(module, *cfg.dummy_inputs())
        expected = target.loop_shapes
        try:
            plan = ckpt.plan_load({k: e.shape for k, e in entries.items()},
                                  _keymap(expected, entries, module, vit_prefix), expected, dont_load)
        except CheckpointError as err:
            raise CheckpointError(str(err) + _hints(entries, expected, module, vit_prefix)) from None
        if module.scan:
            _read_stacked_whole(target, entries, plan)
        sharding = None
        if mesh is not None:
            from jimm_linen.partitioning import leaf_sharding
            sharding = leaf_sharding(mesh, rules)
        # A given module gets its own param_dtype; a built one param_dtype, or the stored dtypes.
        target_dtype = module.param_dtype if isinstance(model, (SigLIP, ViT)) else param_dtype
        variables = engine.load(target, _EntryReader(entries), plan, rng=rng, param_dtype=target_dtype,
                                sharding=sharding, total_bytes=reader.total_bytes)
    return module, variables


class _EntryReader:
    """The engine's view of the file's entries. An `.npz` member is read whole (numpy cannot
    read part of a zipped array); the one-slot cache behind the entries serves a tensor's other
    boxes and layers from that one read."""

    def __init__(self, entries: Mapping[str, npz.Entry]):
        self._entries = entries

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key].dtype

    def get_region(self, key: str, index) -> np.ndarray:
        return self._entries[key].read()[index]


def _read_stacked_whole(target: engine.Target, entries: dict[str, npz.Entry], plan: dict) -> None:
    """Where the file stores a scanned parameter's layers as one stacked tensor, in order and
    unchanged, the plan reads that tensor as the parameter instead of restacking its layers."""
    for path, layers in target.layers.items():
        if layers == [path]:
            continue
        sources = [plan.get(p) for p in layers]
        if any(s is None or s.transform is not ckpt.IDENTITY for s in sources):
            continue
        of = [entries[s.hf_key].layer_of for s in sources]
        if any(x is None for x in of) or any(r is not of[0][0] for r, _ in of):
            continue
        if [i for _, i in of] == list(range(len(layers))):
            stacked = f"{path} (stacked)"
            first = entries[sources[0].hf_key]
            entries[stacked] = npz.Entry((len(layers), *first.shape), first.dtype, of[0][0])
            plan[path] = ckpt.Source(stacked, ckpt.IDENTITY)
