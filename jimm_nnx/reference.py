"""Parity against HF Transformers' PyTorch models: build references, run both, measure the gap.

Needs torch (the `parity` extra). The reference is always HF's own modeling code: built from a
config with a fixed seed, saved with `save_pretrained`, and loaded by jimm from that directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jimm_linen.registry import decoders

# Tolerance on float32 CPU: max |jimm - ref| <= RTOL * max(1, max |ref|).
RTOL = 1e-5

# Small ViT configs that between them vary image/patch size, depth, heads, channels, qkv_bias,
# layer_norm_eps and hidden_act. They are the `jimm parity` defaults (no downloads).
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit-gelu-16px": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, image_size=16, patch_size=4, num_labels=5),
    "vit-gelu_new-nobias-24px": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                                     intermediate_size=64, image_size=24, patch_size=8, qkv_bias=False,
                                     hidden_act="gelu_new", layer_norm_eps=1e-6, num_labels=3),
    "vit-quick_gelu-1ch-32px": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                                    intermediate_size=128, image_size=32, patch_size=8, num_channels=1,
                                    hidden_act="quick_gelu", layer_norm_eps=1e-5, num_labels=10),
}

# Tower sizes that small CLIP and SigLIP configs share (HF kwargs).
TEXT_32 = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
VISION_48 = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                 patch_size=4)

# Small CLIP configs: projection_dim unlike either tower's width, an activation and a
# LayerNorm eps per tower, EOS ids that are not the largest id, and the old `eos_token_id == 2`
# configs that HF pools at the largest id.
CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "clip-quick_gelu-eos5": dict(
        projection_dim=24, vision_config=VISION_48,
        text_config=dict(**TEXT_32, max_position_embeddings=12, pad_token_id=1, bos_token_id=3, eos_token_id=5)),
    "clip-gelu-eos2-32px": dict(
        projection_dim=40,
        text_config=dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=3, max_position_embeddings=9, hidden_act="gelu",
                         layer_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="gelu_new", layer_norm_eps=1e-6)),
}

# Small SigLIP configs: the text head projects to the image width; activations and eps per tower.
SIGLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "siglip-tanh-16px": dict(
        vision_config=VISION_48,
        text_config=dict(**TEXT_32, max_position_embeddings=10, projection_size=48, pad_token_id=1, eos_token_id=2)),
    "siglip-gelu-24px": dict(
        text_config=dict(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=7, projection_size=32,
                         hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=24, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)),
}

# Small DINOv2 configs: GELU and SwiGLU MLPs, with and without the mask token, registers (HF's
# Dinov2WithRegistersModel: the configs with `num_register_tokens`, whose resizing antialiases).
DINOV2_CONFIGS: dict[str, dict[str, Any]] = {
    "dinov2-gelu-28px": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=28,
                             patch_size=7, layerscale_value=0.5),
    "dinov2-reg-swiglu-24px": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=24,
                                   patch_size=8, use_swiglu_ffn=True, qkv_bias=False, layer_norm_eps=1e-5,
                                   num_register_tokens=2),
}

# Small DINOv3 configs: plain and gated MLPs, registers or none, each bias switched.
DINOV3_CONFIGS: dict[str, dict[str, Any]] = {
    "dinov3-gelu-32px": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                             image_size=32, patch_size=8, num_register_tokens=4, layerscale_value=0.1),
    "dinov3-swiglu-nobias-16px": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
                                      image_size=16, patch_size=4, use_gated_mlp=True, hidden_act="silu",
                                      mlp_bias=False, query_bias=False, key_bias=True, value_bias=False,
                                      proj_bias=False, rope_theta=1000.0),
}

# The real sizes: some bugs only show at real sizes.
VIT_B16: dict[str, Any] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, image_size=224, patch_size=16, num_labels=1000)
CLIP_B32: dict[str, Any] = {}  # transformers' CLIPConfig defaults are openai/clip-vit-base-patch32
# SiglipConfig's defaults are google/siglip-base-patch16-224 except the token ids, which it
# leaves at CLIP's (49406/49407, outside SigLIP's 32000-token vocabulary); that checkpoint
# pads and ends with id 1.
SIGLIP_B16: dict[str, Any] = dict(text_config=dict(pad_token_id=1, eos_token_id=1, bos_token_id=None))
DINOV2_S14: dict[str, Any] = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                                  patch_size=14)  # facebook/dinov2-small
DINOV3_S16: dict[str, Any] = dict(num_register_tokens=4)  # DINOv3ViTConfig's defaults are ViT-S/16 otherwise

# The decoder families' configs are their registry entries' (`parity`, `parity_full`).
DECODERS = decoders()

# family -> {name: HF config kwargs}: what `jimm parity` runs by default, and with `--full`.
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "vit": VIT_CONFIGS, "clip": CLIP_CONFIGS, "siglip": SIGLIP_CONFIGS, "dinov2": DINOV2_CONFIGS,
    "dinov3": DINOV3_CONFIGS, **{name: fam.parity for name, fam in DECODERS.items()}}
FULL: dict[str, dict[str, dict[str, Any]]] = {
    "vit": {"vit-b16": VIT_B16}, "clip": {"clip-vit-b32": CLIP_B32}, "siglip": {"siglip-base16": SIGLIP_B16},
    "dinov2": {"dinov2-s14": DINOV2_S14}, "dinov3": {"dinov3-s16": DINOV3_S16},
    **{name: fam.parity_full for name, fam in DECODERS.items()}}


def perturb_(model, seed: int, scale: float = 0.1) -> None:
    """Add seeded noise to the norms, biases and every tensor HF initialises to zero: HF
    initialises LayerNorms to (1, 0), biases to 0 and some tokens (DINO's mask and register
    tokens) to 0, which would hide a swapped scale/bias or a dropped bias or token. Matrices
    keep HF's random init, so activations stay at realistic scales."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 or not p.any():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def build_vit_reference(config_kwargs: dict[str, Any], out_dir: str | Path, seed: int = 0):
    """A `transformers.ViTForImageClassification` with seeded random weights, saved to `out_dir`."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    _quiet_transformers()

    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(**config_kwargs)).eval()
    perturb_(model, seed + 1)
    model.save_pretrained(out_dir)
    return model


def build_reference(family: str, config_kwargs: dict[str, Any], out_dir: str | Path, seed: int = 0):
    """HF's PyTorch model of `family` (a key of `DEFAULTS`) with seeded random weights (norms,
    biases and zero-initialised tensors perturbed; every tensor random for the decoders), saved
    to `out_dir`. A "dinov2" config with `num_register_tokens` is HF's `Dinov2WithRegistersModel`."""
    if family == "vit":
        return build_vit_reference(config_kwargs, out_dir, seed)
    if family in DECODERS:
        return build_decoder_reference(family, config_kwargs, out_dir, seed)
    import torch
    import transformers

    _quiet_transformers()
    if family == "dinov2" and "num_register_tokens" in config_kwargs:
        family = "dinov2_with_registers"
    config_cls, model_cls = {"clip": (transformers.CLIPConfig, transformers.CLIPModel),
                             "siglip": (transformers.SiglipConfig, transformers.SiglipModel),
                             "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model),
                             "dinov2_with_registers": (transformers.Dinov2WithRegistersConfig,
                                                       transformers.Dinov2WithRegistersModel),
                             "dinov3": (transformers.DINOv3ViTConfig, transformers.DINOv3ViTModel)}[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**config_kwargs)).eval()
    perturb_(model, seed + 1)
    model.save_pretrained(out_dir)
    return model


def randomize_(model, seed: int) -> None:
    """Replace every tensor of `model` with seeded noise, the norm weights too: HF starts norms at
    1 and biases at 0, which would hide a swapped, dropped or misplaced one. Matrices are
    N(0, 1/fan_in) and embeddings N(0, 1), so that activations stay O(1) through the blocks;
    norm weights 1 + N(0, 0.5^2), biases N(0, 0.5^2). A tied head is the embedding (one tensor).
    Norms and embeddings are known by name (`norm`, `embed`) or by module (GPT-2's `ln_1`,
    `wte`, `wpe`). The fan-in is the last dim of torch's `Linear` `(out, in)` and of transformers
    5's stacked expert kernels `(experts, out, in)`, the first of GPT-2's `Conv1D` `(in, out)`."""
    import torch
    from transformers.pytorch_utils import Conv1D

    owner = {f"{prefix}.{name}" if prefix else name: module for prefix, module in model.named_modules()
             for name, _ in module.named_parameters(recurse=False)}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = owner[name]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name or (isinstance(module, torch.nn.LayerNorm) and name.endswith(".weight")):
                p.copy_(1.0 + 0.5 * noise)
            elif p.ndim == 1:
                p.copy_(0.5 * noise)
            elif "embed" in name or isinstance(module, torch.nn.Embedding):
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[0 if isinstance(module, Conv1D) else -1] ** 0.5)


def build_decoder_reference(family: str, config_kwargs: dict[str, Any], out_dir: str | Path, seed: int = 0):
    """HF's PyTorch `*ForCausalLM` of a registered decoder `family` (its `model_type`) with every tensor
    seeded random (`randomize_`), saved to `out_dir`. Kwargs in the old style (`rope_theta` +
    `rope_scaling`) give a config.json in that style, as older hub files are: transformers 5
    itself writes `rope_parameters`."""
    import copy

    import torch
    import transformers

    _quiet_transformers()
    torch.manual_seed(seed)
    # A copy: transformers fills its rope dicts in place (rope_theta and rope_type into rope_scaling).
    hf_config = transformers.CONFIG_MAPPING[family](**copy.deepcopy(config_kwargs))
    model = getattr(transformers, DECODERS[family].config_cls.architecture)(hf_config).eval()
    randomize_(model, seed + 1)
    model.save_pretrained(out_dir)
    if "rope_scaling" in config_kwargs or "rope_theta" in config_kwargs:
        cfg_file = Path(out_dir) / "config.json"
        hf = json.loads(cfg_file.read_text())
        hf.pop("rope_parameters")
        hf.update({k: config_kwargs[k] for k in ("rope_theta", "rope_scaling") if k in config_kwargs})
        cfg_file.write_text(json.dumps(hf, indent=2, sort_keys=True))
    return model


def is_decoder(directory: str | Path) -> bool:
    """Whether `directory` holds one of the decoder families (by config.json's `model_type`), or a
    multimodal checkpoint whose text part loads as one (Gemma 3's `gemma3`)."""
    from jimm_linen.registry import families

    model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    return model_type in DECODERS or getattr(families().get(model_type), "text_part", False)


def load_reference(directory: str | Path):
    """HF's PyTorch model for a checkpoint directory, picked from its config like AutoModel does,
    in float32 (the comparison's precision, whatever dtype the files hold)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageClassification

    _quiet_transformers()
    arch = (json.loads((Path(directory) / "config.json").read_text()).get("architectures") or [""])[0]
    if is_decoder(directory):
        auto = AutoModelForCausalLM
    else:
        auto = AutoModelForImageClassification if "ForImageClassification" in arch else AutoModel
    return auto.from_pretrained(directory, dtype=torch.float32).eval()


def random_images(batch: int, size: int | tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    """NCHW float32 pixel values, as HF models take them."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.RandomState(seed).randn(batch, channels, h, w).astype(np.float32)


def random_text(batch: int, length: int, vocab_size: int, eos_token_id: int, pad_token_id: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids, attention_mask)`, int64: random ids other than EOS and padding, one EOS per
    row at a position that differs between rows, then padding (mask 0). The first row is
    unpadded (EOS last), so both the padded and unpadded cases run."""
    rng = np.random.RandomState(seed)
    allowed = np.setdiff1d(np.arange(vocab_size), [eos_token_id, pad_token_id])
    ids = rng.choice(allowed, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(batch):
        eos = length - 1 - (row * 2) % max(1, length - 1)
        ids[row, eos] = eos_token_id
        ids[row, eos + 1:] = pad_token_id
        mask[row, eos + 1:] = 0
    return ids.astype(np.int64), mask


def left_padded_ids(batch: int, length: int, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids, attention_mask)`, int64, left-padded as generation batches are: row 0 is
    `length` real tokens, each later row fewer (padding id 0, mask 0)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(1, batch):
        pad = min(length - 1, (row * length) // batch + row % 2)
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids.astype(np.int64), mask


def hf_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """The `position_ids` HF's `generate` gives a left-padded batch (a plain forward would count
    the padding): the count of real tokens before each one, 1 at padding."""
    return np.where(attention_mask > 0, np.cumsum(attention_mask, -1) - 1, 1).astype(np.int64)


def decoder_reference_outputs(model, input_ids: np.ndarray, attention_mask: np.ndarray):
    """`(logits, hidden_states)` of an HF `*ForCausalLM` on a left-padded batch, float32 numpy."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                    position_ids=torch.from_numpy(hf_position_ids(attention_mask)), output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def real_positions(x, attention_mask: np.ndarray) -> np.ndarray:
    """`x [B, T, ...]` at the positions the mask marks real, `[n, ...]` (padding positions hold
    whatever a model computes for them, which no caller reads)."""
    return np.asarray(x, np.float32)[np.asarray(attention_mask) > 0]


def reference_outputs(model, pixel_values: np.ndarray, interpolate_pos_encoding: bool = False):
    """`(output, hidden_states)`: logits (or pooled output, or last hidden state) and HF's hidden_states."""
    import torch

    # DINOv2 always resizes its position embeddings and DINOv3 has none: their forward takes no
    # interpolate_pos_encoding.
    kwargs = {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        kwargs["interpolate_pos_encoding"] = interpolate_pos_encoding
    with torch.no_grad():
        out = model(torch.from_numpy(pixel_values), output_hidden_states=True, **kwargs)
    if getattr(out, "logits", None) is not None:
        main = out.logits
    elif getattr(out, "pooler_output", None) is not None:
        main = out.pooler_output
    else:
        main = out.last_hidden_state
    return main.numpy(), [h.numpy() for h in out.hidden_states]


def image_text_reference(model, pixel_values, input_ids, attention_mask=None, interpolate_pos_encoding=False):
    """HF CLIPModel / SiglipModel outputs as `(logits_per_image, {name: tensor})` with the
    embeddings and both towers' hidden states (named as `image_text_named` names them)."""
    import torch

    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixel_values), input_ids=torch.from_numpy(input_ids),
                    attention_mask=None if attention_mask is None else torch.from_numpy(attention_mask),
                    output_hidden_states=True, interpolate_pos_encoding=interpolate_pos_encoding)
    named = {"image_embeds": out.image_embeds.numpy(), "text_embeds": out.text_embeds.numpy()}
    named.update({f"img {i}": h.numpy() for i, h in enumerate(out.vision_model_output.hidden_states)})
    named.update({f"txt {i}": h.numpy() for i, h in enumerate(out.text_model_output.hidden_states)})
    return out.logits_per_image.numpy(), named


def image_text_named(out) -> tuple[Any, dict[str, Any]]:
    """Our `ImageTextOutput` (with hidden states) in the form `image_text_reference` gives."""
    named = {"image_embeds": out.image_embeds, "text_embeds": out.text_embeds}
    named.update({f"img {i}": h for i, h in enumerate(out.vision_output.hidden_states)})
    named.update({f"txt {i}": h for i, h in enumerate(out.text_output.hidden_states)})
    return out.logits_per_image, named


@dataclasses.dataclass
class ParityResult:
    name: str
    path: str  # "linen" | "nnx"
    max_abs: float
    rel: float  # max_abs / max(1, max|ref|)
    argmax_agree: float  # fraction of rows whose argmax matches
    worst_layer: str  # the intermediate tensor (hidden state, embedding) furthest from the reference
    worst_layer_rel: float
    tol: float
    # Decoders: the fraction of greedy tokens equal to HF `generate`'s (None: not run).
    greedy_agree: float | None = None

    @property
    def ok(self) -> bool:
        greedy_ok = self.greedy_agree is None or self.greedy_agree == 1.0
        return self.rel <= self.tol and self.worst_layer_rel <= self.tol and greedy_ok


def compare(name: str, path: str, ours, ref, ours_named: dict[str, Any], ref_named: dict[str, Any]) -> ParityResult:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    if ours.shape != ref.shape:
        raise ValueError(f"{name}/{path}: output shape {ours.shape} vs reference {ref.shape}")
    max_abs = float(np.abs(ours - ref).max())
    if set(ours_named) != set(ref_named):
        raise ValueError(f"{name}/{path}: intermediate tensors {sorted(ours_named)} vs reference {sorted(ref_named)}")
    rel = {k: float(np.abs(np.asarray(ours_named[k], np.float32) - ref_named[k]).max()
                    / max(1.0, np.abs(ref_named[k]).max())) for k in ref_named}
    worst = max(rel, key=rel.get)
    return ParityResult(
        name=name, path=path, max_abs=max_abs, rel=max_abs / max(1.0, float(np.abs(ref).max())),
        argmax_agree=float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        worst_layer=worst, worst_layer_rel=rel[worst], tol=RTOL,
    )


@dataclasses.dataclass
class LinenModel:
    """A Linen module with its variables, called as a function of the model inputs (and, for a
    decoder, `generate`, as the NNX classes are)."""

    module: Any
    variables: Any

    def __call__(self, *args, **kwargs):
        return self.module.apply(self.variables, *args, **kwargs)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        from jimm_linen.generation import generate

        return generate(self.module, self.variables, input_ids, attention_mask, **kwargs)


def load_linen(directory: Path) -> Callable[..., Any]:
    """jimm's Linen model for `directory`, as a function of the model inputs."""
    import jimm_linen

    return LinenModel(*jimm_linen.from_pretrained(directory))


# A runner loads jimm's model for a checkpoint directory through one path (one face of jimm) and
# returns it as a function of the model inputs. Here only the Linen one: `jimm_nnx.parity.RUNNERS`
# adds "nnx" (this package does not import the NNX one).
Runner = Callable[[Path], Callable[..., Any]]
RUNNERS: dict[str, Runner] = {"linen": load_linen}


def no_progress(message: str) -> None:
    """The default `progress`: say nothing."""


def check_directory(name: str, directory: Path, runners: Mapping[str, Runner] = RUNNERS, batch: int = 2,
                    image_size: int | None = None, seed: int = 0,
                    progress: Callable[[str], None] = no_progress) -> list[ParityResult]:
    """Run HF's model and jimm's (each of `runners`, by path name) on the same random inputs; one
    result per path. `progress` is told each step (running the reference, loading through a
    path, comparing) as a line of text.
    At an `image_size` other than the config's, position embeddings are interpolated and the
    rows are named `name@<size>px`. Image-text models get random token ids with padding and
    an `attention_mask` (row 0 unpadded)."""
    import jax.numpy as jnp

    directory = Path(directory)
    if is_decoder(directory):
        return check_decoder_directory(name, directory, runners, batch, seed=seed, progress=progress)
    ref_model = load_reference(directory)
    cfg = ref_model.config
    vision_cfg = getattr(cfg, "vision_config", cfg)
    size = image_size or vision_cfg.image_size
    interpolate = size != vision_cfg.image_size
    if interpolate:
        name = f"{name}@{size}px"
    progress(f"{name}: running the HF reference (PyTorch)")
    pixels = random_images(batch, size, vision_cfg.num_channels, seed)
    images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    if hasattr(cfg, "text_config"):
        t = cfg.text_config
        ids, mask = random_text(batch, t.max_position_embeddings, t.vocab_size, t.eos_token_id, t.pad_token_id, seed)
        ref, ref_named = image_text_reference(ref_model, pixels, ids, mask, interpolate)
        inputs = (images, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
        named = image_text_named
    else:
        ref, ref_layers = reference_outputs(ref_model, pixels, interpolate)
        ref_named = {f"hidden {i}": h for i, h in enumerate(ref_layers)}
        inputs = (images,)

        def named(out):
            return out.output, {f"hidden {i}": h for i, h in enumerate(out.hidden_states)}
    results = []
    for path, load in runners.items():
        progress(f"{name}: loading through {path}")
        run = load(directory)
        progress(f"{name}: comparing {path} with the reference")
        ours, ours_named = named(run(*inputs, return_hidden_states=True, interpolate_pos_encoding=interpolate))
        results.append(compare(name, path, ours, ref, ours_named, ref_named))
    return results


# Decoders: the length of the batch `jimm parity` runs (longer than the dynamic-rope default
# config's max_position_embeddings, so that it rescales) and of the greedy continuation.
DECODER_LENGTH = 16
GREEDY_TOKENS = 8


def greedy_tokens(run, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
                  eos_token_id, pad_token_id) -> np.ndarray:
    """jimm's greedy continuation `[B, max_new_tokens]` through a runner's model (`generate`,
    as `jimm_linen.generation.generate` and the NNX classes' take it)."""
    import jax.numpy as jnp

    out = run.generate(jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
                       max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id)
    return np.asarray(out.sequences)[:, input_ids.shape[1]:]


def hf_greedy_tokens(model, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
                     eos_token_id, pad_token_id) -> np.ndarray:
    """HF `generate(do_sample=False)`'s new tokens `[B, max_new_tokens]` (rows that ended early
    padded with `pad_token_id`, as `generate` pads them)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                             pad_token_id=pad_token_id)
    new = out[:, input_ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, max_new_tokens - new.shape[1])), constant_values=pad_token_id)


def check_decoder_directory(name: str, directory: Path, runners: Mapping[str, Runner] = RUNNERS, batch: int = 2,
                            length: int = DECODER_LENGTH, seed: int = 0,
                            progress: Callable[[str], None] = no_progress) -> list[ParityResult]:
    """A Llama / Qwen3 / OLMo 2 checkpoint directory against HF's `AutoModelForCausalLM`: logits
    and every hidden state at the real positions of a left-padded batch of random ids (row 0
    unpadded), and the greedy continuation against HF `generate`; one result per path."""
    import jax.numpy as jnp

    directory = Path(directory)
    ref_model = load_reference(directory)
    cfg = ref_model.config.get_text_config()  # a multimodal model's text part (itself otherwise)
    progress(f"{name}: running the HF reference (PyTorch)")
    ids, mask = left_padded_ids(batch, length, cfg.vocab_size, seed)
    ref_logits, ref_hidden = decoder_reference_outputs(ref_model, ids, mask)
    ref_named = {f"hidden {i}": real_positions(h, mask) for i, h in enumerate(ref_hidden)}
    eos = cfg.eos_token_id
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    pad = 0 if pad is None else pad  # no EOS either: rows never end, the pad id is never written
    ref_greedy = None
    results = []
    for path, load in runners.items():
        progress(f"{name}: loading through {path}")
        run = load(directory)
        progress(f"{name}: comparing {path} with the reference")
        out = run(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), return_hidden_states=True)
        named = {f"hidden {i}": real_positions(h, mask) for i, h in enumerate(out.hidden_states)}
        result = compare(name, path, real_positions(out.logits, mask), real_positions(ref_logits, mask),
                         named, ref_named)
        greedy = greedy_tokens(run, ids, mask, GREEDY_TOKENS, eos, pad)
        if ref_greedy is None:
            ref_greedy = hf_greedy_tokens(ref_model, ids, mask, GREEDY_TOKENS, eos, pad)
        result.greedy_agree = float(np.mean(greedy == ref_greedy)) if greedy.shape == ref_greedy.shape else 0.0
        results.append(result)
    return results


def format_table(results: list[ParityResult]) -> str:
    header = ("model", "path", "max abs diff", "rel diff", "argmax agree", "worst tensor (rel)", "greedy agree", "ok")
    rows = [(r.name, r.path, f"{r.max_abs:.2e}", f"{r.rel:.2e}", f"{r.argmax_agree:.0%}",
             f"{r.worst_layer} ({r.worst_layer_rel:.2e})", "n/a" if r.greedy_agree is None else f"{r.greedy_agree:.0%}",
             "yes" if r.ok else "NO") for r in results]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
