"""Parity against HF Transformers' PyTorch models: build references, run both, measure the gap.

Needs torch (the `parity` extra). The reference is always HF's own modeling code: built from a
config with a fixed seed, saved with `save_pretrained`, and loaded by jimm from that directory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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

# The real size: some bugs only show at real sizes.
VIT_B16: dict[str, Any] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, image_size=224, patch_size=16, num_labels=1000)


def perturb_(model, seed: int, scale: float = 0.1) -> None:
    """Add seeded noise to the norms and biases: HF initialises LayerNorms to (1, 0) and biases
    to 0, which would hide a swapped scale/bias or a dropped bias. Matrices keep HF's random
    init, so activations stay at realistic scales."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
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


def load_reference(directory: str | Path):
    """HF's PyTorch model for a checkpoint directory, picked from its config like AutoModel does."""
    from transformers import AutoModel, AutoModelForImageClassification

    _quiet_transformers()
    arch = (json.loads((Path(directory) / "config.json").read_text()).get("architectures") or [""])[0]
    auto = AutoModelForImageClassification if "ForImageClassification" in arch else AutoModel
    return auto.from_pretrained(directory).eval()


def random_images(batch: int, size: int | tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    """NCHW float32 pixel values, as HF models take them."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.RandomState(seed).randn(batch, channels, h, w).astype(np.float32)


def reference_outputs(model, pixel_values: np.ndarray, interpolate_pos_encoding: bool = False):
    """`(output, hidden_states)`: logits (or pooled output, or last hidden state) and HF's hidden_states."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(pixel_values), output_hidden_states=True,
                    interpolate_pos_encoding=interpolate_pos_encoding)
    if getattr(out, "logits", None) is not None:
        main = out.logits
    elif getattr(out, "pooler_output", None) is not None:
        main = out.pooler_output
    else:
        main = out.last_hidden_state
    return main.numpy(), [h.numpy() for h in out.hidden_states]


@dataclasses.dataclass
class ParityResult:
    name: str
    path: str  # "linen" | "nnx"
    max_abs: float
    rel: float  # max_abs / max(1, max|ref|)
    argmax_agree: float  # fraction of rows whose argmax matches
    worst_layer: int
    worst_layer_rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.rel <= self.tol and self.worst_layer_rel <= self.tol


def compare(name: str, path: str, ours, ref, ours_layers, ref_layers) -> ParityResult:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    if ours.shape != ref.shape:
        raise ValueError(f"{name}/{path}: output shape {ours.shape} vs reference {ref.shape}")
    max_abs = float(np.abs(ours - ref).max())
    if len(ours_layers) != len(ref_layers):
        raise ValueError(f"{name}/{path}: {len(ours_layers)} hidden states vs reference {len(ref_layers)}")
    layer_rel = [float(np.abs(np.asarray(a) - b).max() / max(1.0, np.abs(b).max()))
                 for a, b in zip(ours_layers, ref_layers)]
    worst = int(np.argmax(layer_rel))
    return ParityResult(
        name=name, path=path, max_abs=max_abs, rel=max_abs / max(1.0, float(np.abs(ref).max())),
        argmax_agree=float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        worst_layer=worst, worst_layer_rel=layer_rel[worst], tol=RTOL,
    )


def linen_runner(directory: Path) -> Callable:
    import jax.numpy as jnp

    import jimm_linen

    model, variables = jimm_linen.from_pretrained(directory)

    def run(images_nhwc, interpolate_pos_encoding=False):
        out = model.apply(variables, jnp.asarray(images_nhwc), return_hidden_states=True,
                          interpolate_pos_encoding=interpolate_pos_encoding)
        return out.output, out.hidden_states

    return run


def nnx_runner(directory: Path) -> Callable:
    import jax.numpy as jnp

    import jimm_nnx

    model = jimm_nnx.VisionTransformer.from_pretrained(directory, sharding=jimm_nnx.NoSharding())

    def run(images_nhwc, interpolate_pos_encoding=False):
        out = model(jnp.asarray(images_nhwc), return_hidden_states=True,
                    interpolate_pos_encoding=interpolate_pos_encoding)
        return out.output, out.hidden_states

    return run


RUNNERS = {"linen": linen_runner, "nnx": nnx_runner}


def check_directory(name: str, directory: Path, paths=("linen", "nnx"), batch: int = 2,
                    image_size: int | None = None, seed: int = 0) -> list[ParityResult]:
    """Run HF's model and jimm's (each path) on the same random images; one result per path.
    At an `image_size` other than the config's, position embeddings are interpolated and the
    rows are named `name@<size>px`."""
    ref_model = load_reference(directory)
    cfg = ref_model.config
    size = image_size or cfg.image_size
    interpolate = size != cfg.image_size
    if interpolate:
        name = f"{name}@{size}px"
    pixels = random_images(batch, size, cfg.num_channels, seed)
    ref, ref_layers = reference_outputs(ref_model, pixels, interpolate)
    images = pixels.transpose(0, 2, 3, 1)
    results = []
    for path in paths:
        ours, ours_layers = RUNNERS[path](directory)(images, interpolate)
        results.append(compare(name, path, ours, ref, ours_layers, ref_layers))
    return results


def format_table(results: list[ParityResult]) -> str:
    header = ("model", "path", "max abs diff", "rel diff", "argmax agree", "worst layer (rel)", "ok")
    rows = [(r.name, r.path, f"{r.max_abs:.2e}", f"{r.rel:.2e}", f"{r.argmax_agree:.0%}",
             f"{r.worst_layer} ({r.worst_layer_rel:.2e})", "yes" if r.ok else "NO") for r in results]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
