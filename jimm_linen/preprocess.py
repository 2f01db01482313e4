"""Image and text preprocessing through HF Transformers' own processors, for jimm's models.

jimm does not re-implement resizing, cropping, normalising or tokenising: a checkpoint's
`AutoProcessor` (image processor + tokenizer, saved beside `config.json`) does it, with NumPy
outputs (`return_tensors="np"`) and the PIL image backend, so neither torch nor torchvision is
needed. This module only loads the processor, picks the text padding each family was trained
with, and turns HF's layout into jimm's (NCHW `pixel_values` -> NHWC images, int32 ids):

    processor = load_processor("path/or/hub-id")
    images, input_ids, attention_mask = prepare(processor, images=pil_images, text=prompts)
    out = model.apply(variables, images, input_ids, attention_mask)   # ImageTextOutput

Needs `pillow` for images and, for SigLIP's tokenizer, `sentencepiece` and `protobuf`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ModelInputs(NamedTuple):
    """What jimm's image-text models take, in their order: `model.apply(variables, *inputs)`.
    A field is None when the processor output has no such entry (images only, or text only,
    or a tokenizer that returns no attention mask)."""

    images: jax.Array | None  # (B, H, W, C) float32
    input_ids: jax.Array | None  # (T, L) int32
    attention_mask: jax.Array | None  # (T, L) int32, 1 for real tokens, 0 for padding


def load_processor(name_or_path: str | os.PathLike, *, backend: str | None = "pil", **kwargs: Any):
    """`transformers.AutoProcessor` for a checkpoint directory or hub id (the hub's cache and
    `HF_HUB_OFFLINE` apply). The image processor uses `backend` ("pil" by default: NumPy and
    PIL only, and the same numbers whether or not torchvision is installed; None lets HF pick,
    torchvision when available). `kwargs` go to `AutoProcessor.from_pretrained`."""
    from transformers import AutoImageProcessor, AutoProcessor

    name_or_path = os.fspath(name_or_path)
    if backend is not None and "image_processor" not in kwargs:
        # Given to AutoProcessor, `backend` would also reach (and relabel) the tokenizer.
        kwargs["image_processor"] = AutoImageProcessor.from_pretrained(name_or_path, backend=backend)
    return AutoProcessor.from_pretrained(name_or_path, **kwargs)


def is_siglip(processor) -> bool:
    """Whether `processor` (or a bare tokenizer) is SigLIP's: its tokenizer is a `SiglipTokenizer`."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return any(cls.__name__ == "SiglipTokenizer" for cls in type(tokenizer).__mro__)


def text_kwargs(processor) -> dict[str, Any]:
    """The tokenizer arguments each family was trained with, as HF's zero-shot pipeline uses
    them: SigLIP pads every text to the tokenizer's `model_max_length` (its text tower pools the
    last position, so the padding is part of the input) and truncates; CLIP pads to the
    longest text in the batch (it pools at the EOS token)."""
    if is_siglip(processor):
        return {"padding": "max_length", "truncation": True}
    return {"padding": True}


def _array(batch: Mapping[str, Any], key: str):
    value = batch.get(key)
    if value is None:
        return None
    if hasattr(value, "detach"):  # a torch tensor (return_tensors="pt")
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.dtype == object:
        raise ValueError(f"{key!r} is ragged (texts of different lengths without padding); call the processor "
                         f"with padding (jimm_linen.preprocess.text_kwargs gives the model's) and "
                         f"return_tensors='np'")
    return value


def to_model_inputs(batch: Mapping[str, Any]) -> ModelInputs:
    """HF processor output (a `BatchFeature` or dict with `pixel_values` NCHW, `input_ids`,
    `attention_mask`; NumPy or torch) -> `ModelInputs` (NHWC float32 images, int32 ids and mask)."""
    pixels = _array(batch, "pixel_values")
    images = None
    if pixels is not None:
        if pixels.ndim != 4:
            raise ValueError(f"expected pixel_values of shape (batch, channels, height, width), got {pixels.shape}")
        images = jnp.asarray(np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), jnp.float32)
    ids, mask = _array(batch, "input_ids"), _array(batch, "attention_mask")
    if ids is not None and ids.ndim == 1:  # a single text
        ids = ids[None]
        mask = None if mask is None else mask[None]
    return ModelInputs(images=images,
                       input_ids=None if ids is None else jnp.asarray(ids, jnp.int32),
                       attention_mask=None if mask is None else jnp.asarray(mask, jnp.int32))


def prepare(processor, images: Any = None, text: str | list[str] | None = None, **kwargs: Any) -> ModelInputs:
    """Run `processor` on images (PIL images, arrays, ... as HF takes them) and/or texts with
    the family's text padding (`text_kwargs`; `kwargs` override it and reach the processor),
    NumPy outputs, and convert: `model.apply(variables, *prepare(processor, images, texts))`."""
    if images is None and text is None:
        raise ValueError("prepare needs images, text or both")
    call = {**(text_kwargs(processor) if text is not None else {}), **kwargs, "return_tensors": "np"}
    if images is not None:
        call["images"] = images
    if text is not None:
        call["text"] = text
    return to_model_inputs(processor(**call))
