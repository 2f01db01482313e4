"""Zero-shot classification (jimm_linen.models.image_text.zero_shot) against HF Transformers.

One template: the helper's logits equal the model's own `logits_per_image` on the class
prompts, ours and HF's. Several templates: they equal a NumPy prompt ensemble computed from
HF's `get_text_features` / `get_image_features`. The checkpoints (random-weight HF models with
locally built tokenizers and image processors) come from `tests.test_clip_pipeline`.
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch

import jimm_linen
from jimm_linen.models.image_text import ZeroShotClassifier, class_embeddings, prompts, zero_shot_logits
from jimm_linen.preprocess import load_processor, prepare
from tests.helpers import assert_close
from tests.test_clip_pipeline import BUILDERS, CLASSES, HF_TEXT_KWARGS, TEMPLATES, hf_processor, pil_images


@dataclasses.dataclass
class Setup:
    family: str
    directory: Path
    processor: Any
    model: Any
    variables: Any
    hf_model: Any
    hf_processor: Any


@pytest.fixture(scope="module", params=["clip", "siglip"])
def setup(request, tmp_path_factory):
    from transformers import AutoModel

    family = request.param
    directory = BUILDERS[family](tmp_path_factory.mktemp(f"{family}-zs"), seed=7)
    model, variables = jimm_linen.from_pretrained(directory)
    return Setup(family, directory, load_processor(directory), model, variables,
                 AutoModel.from_pretrained(directory).eval(), hf_processor(directory))


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def hf_ensemble_logits(s: Setup, images, class_names, templates):
    """The prompt ensemble in NumPy from HF's features: normalise each prompt's embedding,
    average per class, normalise; logits = exp(logit_scale) * image . class (+ logit_bias)."""
    texts = []
    for name in class_names:  # class-major, written out independently of `prompts`
        for template in templates:
            texts.append(template.format(name))
    text_inputs = s.hf_processor(text=texts, return_tensors="pt", **HF_TEXT_KWARGS[s.family])
    image_inputs = s.hf_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        text = s.hf_model.get_text_features(**text_inputs).pooler_output.double().numpy()
        image = s.hf_model.get_image_features(**image_inputs).pooler_output.double().numpy()
        scale = float(s.hf_model.logit_scale.exp())
        bias = float(s.hf_model.logit_bias) if s.family == "siglip" else 0.0
    text = _normalize(text).reshape(len(class_names), len(templates), -1).mean(axis=1)
    classes = _normalize(text)
    return scale * _normalize(image) @ classes.T + bias, classes


def test_prompts_are_class_major():
    assert prompts(["cat", "dog"], ["a {}", "the {}."]) == ["a cat", "the cat.", "a dog", "the dog."]
    with pytest.raises(ValueError, match="'{}'"):
        prompts(["cat"], ["a photo"])
    with pytest.raises(ValueError, match="at least one"):
        prompts(["cat"], [])


def test_one_template_equals_model_logits(setup):
    """One prompt per class: the helper's logits are `logits_per_image` of the whole model on
    the prompts, ours and HF's (HF's pipeline from its own processor call)."""
    s = setup
    texts = prompts(CLASSES, [TEMPLATES[0]])
    images, ids, mask = prepare(s.processor, images=pil_images(), text=texts)
    embeds = class_embeddings(s.model, s.variables, ids, mask)
    logits = zero_shot_logits(s.model, s.variables, images, embeds)

    ours_full = jax.jit(s.model.apply)(s.variables, images, ids, mask)
    assert embeds.shape == ours_full.text_embeds.shape == (len(CLASSES), ours_full.text_embeds.shape[1])
    assert_close(embeds, ours_full.text_embeds, what="class embeddings vs text_embeds")
    assert_close(logits, ours_full.logits_per_image, what="zero-shot vs jimm logits_per_image")
    hf_inputs = s.hf_processor(text=texts, images=pil_images(), return_tensors="pt", **HF_TEXT_KWARGS[s.family])
    with torch.no_grad():
        ref = s.hf_model(**hf_inputs).logits_per_image.numpy()
    assert_close(logits, ref, what=f"zero-shot vs HF {s.family} logits_per_image")


def test_template_ensemble_equals_numpy(setup):
    s = setup
    ref_logits, ref_classes = hf_ensemble_logits(s, pil_images(), CLASSES, TEMPLATES)

    # The functions, on all prompts at once.
    _, ids, mask = prepare(s.processor, text=prompts(CLASSES, TEMPLATES))
    embeds = class_embeddings(s.model, s.variables, ids, mask, num_templates=len(TEMPLATES))
    assert_close(embeds, ref_classes, what="ensembled class embeddings")
    single = class_embeddings(s.model, s.variables, ids[::len(TEMPLATES)], mask[::len(TEMPLATES)])
    assert np.abs(np.asarray(single) - ref_classes).max() > 1e-3  # the ensemble is not one template's

    # The classifier: tokenises through the processor, embeds 4 prompts at a time (9 prompts:
    # chunks of 4, 4, 1), preprocesses raw images.
    clf = ZeroShotClassifier.create(s.model, s.variables, s.processor, CLASSES, TEMPLATES, batch_size=4)
    assert clf.class_names == tuple(CLASSES)
    assert_close(clf.class_embeds, ref_classes, what="classifier class embeddings")
    logits = clf(pil_images())
    assert logits.shape == (2, len(CLASSES))
    assert_close(logits, ref_logits, what=f"{s.family} ensemble logits")
    assert_close(clf.logits(prepare(s.processor, images=pil_images()).images), ref_logits, what="logits(NHWC)")

    probs = np.asarray(clf.probabilities(logits), np.float64)
    if s.family == "clip":  # softmax over classes
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(probs, np.exp(ref_logits) / np.exp(ref_logits).sum(-1, keepdims=True), atol=1e-5)
    else:  # independent sigmoids
        np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-ref_logits)), atol=1e-5)
    assert clf.predict(pil_images()) == [CLASSES[i] for i in ref_logits.argmax(-1)]


def test_class_embeddings_rejects_partial_classes(setup):
    s = setup
    _, ids, mask = prepare(s.processor, text=prompts(CLASSES, TEMPLATES))
    with pytest.raises(ValueError, match="num_templates=2"):
        class_embeddings(s.model, s.variables, ids, mask, num_templates=2)


def test_classifier_without_processor_takes_preprocessed_images(setup):
    s = setup
    clf = ZeroShotClassifier.create(s.model, s.variables, s.processor, CLASSES)
    bare = dataclasses.replace(clf, processor=None)
    with pytest.raises(ValueError, match="no processor"):
        bare(pil_images())
    images = prepare(s.processor, images=pil_images()).images
    np.testing.assert_array_equal(np.asarray(bare.logits(images)), np.asarray(clf(pil_images())))
