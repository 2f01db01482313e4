"""`from_pretrained` of a jimm_nnx class on a checkpoint of another kind (a Llama directory given
to `VisionTransformer`, a ViT one to `CausalLM` or `CLIP`, a CLIP one to `SigLIPVisionModel`,
Gemma 2 to `Gemma`, ...) is refused before any weight is read, naming the classes that load
it; each of those does load it. Every public class against every kind of checkpoint."""

from __future__ import annotations

import pytest

import jimm_nnx
from jimm_nnx import reference

# What a user should be told to use for each kind of checkpoint (config.json's model_type).
LOADS = {
    "vit": ["VisionTransformer"],
    "clip": ["CLIP", "CLIPTextModel", "CLIPVisionModel"],
    "clip_vision_model": ["CLIPVisionModel", "VisionTransformer"],  # a CLIP vision tower is a ViT
    "siglip": ["SigLIP", "SigLIPTextModel", "SigLIPVisionModel"],
    "dinov2": ["DINOv2Model"],
    "dinov3_vit": ["DINOv3Model"],
    "llama": ["CausalLM", "Llama"],
    "gemma": ["CausalLM", "Gemma"],
    "gemma2": ["CausalLM", "Gemma2"],
}
CONFIG = {"vit": "ViTConfig", "clip": "CLIPConfig", "clip_vision_model": "ViTConfig", "siglip": "SigLIPConfig",
          "dinov2": "DINOv2Config", "dinov3_vit": "DINOv3Config", "llama": "LlamaConfig", "gemma": "GemmaConfig",
          "gemma2": "Gemma2Config"}
CLASSES = sorted(name for name in jimm_nnx.__all__ if isinstance(c := getattr(jimm_nnx, name), type)
                 and issubclass(c, jimm_nnx.PretrainedModel) and c is not jimm_nnx.PretrainedModel)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """model_type -> a small random-weight HF checkpoint directory of it."""
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for family, model_type in [("vit", "vit"), ("clip", "clip"), ("siglip", "siglip"), ("dinov2", "dinov2"),
                               ("dinov3", "dinov3_vit"), ("llama", "llama"), ("gemma", "gemma"),
                               ("gemma2", "gemma2")]:
        config = next(iter(reference.DEFAULTS[family].values()))
        config = {k: v for k, v in config.items() if k != "num_register_tokens"}  # plain dinov2
        reference.build_reference(family, config, root / model_type)
        out[model_type] = root / model_type
    vision = jimm_nnx.CLIPVisionModel.from_pretrained(out["clip"], sharding=jimm_nnx.NoSharding())
    out["clip_vision_model"] = vision.save_pretrained(root / "clip_vision_model")
    return out


def test_the_classes_tried_are_every_model_class():
    from jimm_nnx.causal_lm import FAMILY_CLASSES

    image = ["CLIP", "CLIPTextModel", "CLIPVisionModel", "CausalLM", "DINOv2Model", "DINOv3Model", "SigLIP",
             "SigLIPTextModel", "SigLIPVisionModel", "VisionTransformer"]
    assert CLASSES == sorted(image + [cls.__name__ for cls in FAMILY_CLASSES.values()])


@pytest.mark.parametrize("model_type", sorted(LOADS))
def test_a_checkpoint_of_another_kind_names_the_classes_that_load_it(checkpoints, model_type):
    path = checkpoints[model_type]
    use = [f"jimm_nnx.{name}" for name in LOADS[model_type]]
    use = f"{', '.join(use[:-1])} or {use[-1]}" if len(use) > 1 else use[0]
    for name in CLASSES:
        if name in LOADS[model_type]:
            continue
        with pytest.raises(ValueError) as refused:
            getattr(jimm_nnx, name).from_pretrained(path)
        assert str(refused.value) == (f"{path} holds a {model_type} checkpoint ({CONFIG[model_type]}), which "
                                      f"jimm_nnx.{name} does not load; use {use}")


@pytest.mark.parametrize("model_type", sorted(LOADS))
def test_the_named_classes_load_it(checkpoints, model_type):
    for name in LOADS[model_type]:
        model = getattr(jimm_nnx, name).from_pretrained(checkpoints[model_type], sharding=jimm_nnx.NoSharding())
        assert type(model) is getattr(jimm_nnx, name)
