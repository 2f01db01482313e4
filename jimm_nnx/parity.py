"""Parity over both of jimm's paths: the NNX runner beside `jimm_nnx.reference`'s Linen one, and
the whole check that `jimm parity` runs (reference models built here, or checkpoint directories,
each at its own resolution and at another one)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jimm_nnx import reference as parity
from jimm_nnx.reference import ParityResult, Runner, no_progress
from jimm_nnx.causal_lm import FAMILY_CLASSES
from jimm_nnx.models import CLIP, DINOv2Model, DINOv3Model, SigLIP, VisionTransformer
from jimm_nnx.sharding import NoSharding
from jimm_linen.registry import decoders, families

# A multimodal checkpoint whose text part loads as a decoder (Gemma 3's `gemma3`) runs that
# decoder's class.
TEXT_PARTS = {name: next(FAMILY_CLASSES[d] for d, dec in decoders().items() if dec.module_cls is fam.module_cls)
              for name, fam in families().items() if fam.text_part}
CLASSES = {"vit": VisionTransformer, "clip": CLIP, "siglip": SigLIP, "dinov2": DINOv2Model,
           "dinov2_with_registers": DINOv2Model, "dinov3_vit": DINOv3Model, **FAMILY_CLASSES, **TEXT_PARTS}


def load_nnx(directory: Path) -> Callable[..., Any]:
    """jimm's NNX model for `directory` (its class picked by the config's `model_type`), as the
    callable the parity check runs (CLIP / SigLIP: `outputs`, the whole `ImageTextOutput`)."""
    model_type = json.loads((directory / "config.json").read_text())["model_type"]
    model = CLASSES[model_type].from_pretrained(directory, sharding=NoSharding())
    return model.outputs if isinstance(model, CLIP | SigLIP) else model


# path name -> runner: every path `jimm parity` can check.
RUNNERS: dict[str, Runner] = {**parity.RUNNERS, "nnx": load_nnx}


def check(checkpoints: Sequence[Path] = (), runners: Mapping[str, Runner] = RUNNERS, batch: int = 2,
          image_size: int | None = None, families: Sequence[str] = tuple(parity.DEFAULTS), full: bool = False,
          progress: Callable[[str], None] = no_progress) -> list[ParityResult]:
    """HF Transformers against jimm through each of `runners`. With `checkpoints` (HF checkpoint
    directories): each image model at its own resolution, and at `image_size` too when given;
    each decoder on a left-padded batch. Without: the embedded reference
    models of `families` (and the full-size ones with `full`), each built here with seeded random
    weights, image models checked at their own resolution and at `image_size` (default: two
    patches larger). `progress` is told each step as a line of text."""
    results = []
    if checkpoints:
        for ckpt in checkpoints:
            sizes = (None, image_size) if image_size and not parity.is_decoder(ckpt) else (None,)
            for size in sizes:
                results += parity.check_directory(str(ckpt), Path(ckpt), runners, batch, size, progress=progress)
        return results
    configs = [(fam, name, cfg) for fam in families
               for name, cfg in {**parity.DEFAULTS[fam], **(parity.FULL[fam] if full else {})}.items()]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (fam, name, cfg) in enumerate(configs):
            progress(f"building reference {i + 1}/{len(configs)}: {name} ({fam})")
            directory = Path(tmp) / name
            model = parity.build_reference(fam, cfg, directory, seed=i)
            if fam in parity.DECODERS:
                results += parity.check_directory(name, directory, runners, batch, progress=progress)
                continue
            # The same checkpoint at another resolution, through interpolate_pos_encoding.
            vision = getattr(model.config, "vision_config", model.config)
            for size in (None, image_size or vision.image_size + 2 * vision.patch_size):
                results += parity.check_directory(name, directory, runners, batch, size, progress=progress)
    return results
