"""Zero-shot classification with CLIP / SigLIP: class prompts -> class embeddings -> logits.

Prompt ensembling as in the CLIP paper (and big_vision's zero-shot evaluator): each class is
written with K templates ("a photo of a {}.", ...), each prompt is embedded and L2-normalised,
the K embeddings of a class are averaged and the mean is normalised again. An image's logits
are then the model's own: `exp(t) * <image, class> (+ b for SigLIP)`, so with one template
they equal `logits_per_image` of the model on the same prompts.

    clf = ZeroShotClassifier.create(model, variables, processor, ["cat", "dog"],
                                    templates=["a photo of a {}.", "a drawing of a {}."])
    logits = clf(pil_images)              # (B, C); clf.probabilities(logits): softmax / sigmoid

The functions are jitted with the model static (Linen modules hash by their config), so the
same model and shapes compile once; they also work inside an outer `jit`. Under `jit` the token
id range is not checked (`check_text`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.models.image_text.model import SigLIP
from jimm_linen.preprocess import prepare


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def prompts(class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)) -> list[str]:
    """Class-major prompts: class c with template k is entry `c * len(templates) + k`."""
    if not templates:
        raise ValueError("need at least one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' where the class name goes: {bad}")
    return [t.format(name) for name in class_names for t in templates]


def _check_rows(rows: int, num_templates: int) -> None:
    if num_templates < 1 or rows % num_templates:
        raise ValueError(f"{rows} prompts are not a whole number of classes times num_templates={num_templates}")


@functools.partial(jax.jit, static_argnames=("model", "num_templates"))
def class_embeddings(model, variables, input_ids, attention_mask=None, num_templates: int = 1):
    """`(C, D)` L2-normalised class embeddings from `C * num_templates` tokenised prompts,
    ordered class-major (row `c * num_templates + k` is class c, template k): the normalised
    text embeddings of each class averaged over its templates, then normalised again."""
    rows = input_ids.shape[0]
    _check_rows(rows, num_templates)
    embeds = _normalize(model.apply(variables, input_ids, attention_mask, method="encode_text"))
    embeds = embeds.reshape(rows // num_templates, num_templates, embeds.shape[-1]).mean(axis=1)
    return _normalize(embeds)


@functools.partial(jax.jit, static_argnames=("model", "interpolate_pos_encoding"))
def image_embeddings(model, variables, images, interpolate_pos_encoding: bool = False):
    """`(B, D)` L2-normalised image embeddings of NHWC images."""
    return _normalize(model.apply(variables, images, interpolate_pos_encoding=interpolate_pos_encoding,
                                  method="encode_image"))


@functools.partial(jax.jit, static_argnames=("model", "interpolate_pos_encoding"))
def zero_shot_logits(model, variables, images, class_embeds, interpolate_pos_encoding: bool = False):
    """`(B, C)` logits of NHWC images against normalised class embeddings (`class_embeddings`)
    with the model's learned scale (and SigLIP's bias), as HF's `logits_per_image`."""
    image_embeds = image_embeddings(model, variables, images, interpolate_pos_encoding)
    return model.apply(variables, image_embeds, class_embeds, method="logits").T


def probabilities(model, logits):
    """Scores as HF's zero-shot pipeline gives them: softmax over classes for CLIP, an
    independent sigmoid per class for SigLIP (trained with the sigmoid loss)."""
    return jax.nn.sigmoid(logits) if isinstance(model, SigLIP) else jax.nn.softmax(logits, axis=-1)


def _chunks(n: int, size: int):
    """`(slice, pad)` covering `range(n)` in pieces of `size`; the last piece is padded to
    `size` (when n > size) so that every piece has one shape and compiles once."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield slice(start, stop), (size - (stop - start) if n > size else 0)


@dataclasses.dataclass(frozen=True)
class ZeroShotClassifier:
    """A CLIP / SigLIP model with its class embeddings computed once. `logits(images_nhwc)` for
    preprocessed images, `__call__(images)` for raw ones (through `processor`)."""

    model: Any
    variables: Any
    class_embeds: jax.Array  # (C, D), normalised
    class_names: tuple[str, ...]
    processor: Any = None

    @classmethod
    def create(cls, model, variables, processor, class_names: Sequence[str],
               templates: Sequence[str] = ("a photo of a {}.",), batch_size: int = 256,
               **text_kwargs: Any) -> "ZeroShotClassifier":
        """Tokenise every class with every template through `processor` (with the family's
        padding, `jimm_linen.preprocess.text_kwargs`; `text_kwargs` override it), embed the
        prompts `batch_size` at a time and ensemble them per class."""
        texts = prompts(class_names, templates)
        _, ids, mask = prepare(processor, text=texts, **text_kwargs)
        ids, mask = np.asarray(ids), None if mask is None else np.asarray(mask)
        embeds = []
        for part, pad in _chunks(len(texts), batch_size):
            chunk_ids = np.pad(ids[part], ((0, pad), (0, 0)), mode="edge")
            chunk_mask = None if mask is None else np.pad(mask[part], ((0, pad), (0, 0)), mode="edge")
            # num_templates=1: each prompt's own normalised embedding
            embeds.append(class_embeddings(model, variables, chunk_ids, chunk_mask)[:part.stop - part.start])
        embeds = jnp.concatenate(embeds).reshape(len(class_names), len(templates), -1).mean(axis=1)
        return cls(model=model, variables=variables, class_embeds=_normalize(embeds),
                   class_names=tuple(class_names), processor=processor)

    def logits(self, images) -> jax.Array:
        """`(B, C)` logits of preprocessed NHWC images."""
        return zero_shot_logits(self.model, self.variables, jnp.asarray(images), self.class_embeds)

    def __call__(self, images, **image_kwargs: Any) -> jax.Array:
        """`(B, C)` logits of raw images (PIL images, arrays, ... as the processor takes them)."""
        if self.processor is None:
            raise ValueError("no processor: pass preprocessed NHWC images to .logits(...)")
        return self.logits(prepare(self.processor, images=images, **image_kwargs).images)

    def probabilities(self, logits) -> jax.Array:
        return probabilities(self.model, logits)

    def predict(self, images, **image_kwargs: Any) -> list[str]:
        """The top class name per raw image."""
        return [self.class_names[i] for i in np.asarray(jnp.argmax(self(images, **image_kwargs), axis=-1))]
