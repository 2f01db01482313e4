"""CLIP with jimm's NNX surface: `CLIP` and its towers `CLIPVisionModel`, `CLIPTextModel`."""

from __future__ import annotations

from jimm_linen.models import image_text as linen_clip
from jimm_nnx.models.image_text import _ImageText, _TextTower, _VisionTower
from jimm_nnx.sharding import CLIPSharding


class CLIP(_ImageText):
    """`jimm_linen.CLIP` as an `nnx.Module`: `model(image, text)`."""

    linen_cls = linen_clip.CLIP
    config_cls = linen_clip.CLIPConfig
    model_type = "clip"
    default_sharding = CLIPSharding


class CLIPVisionModel(_VisionTower):
    model_type = "clip_vision_model"
    default_sharding = CLIPSharding


class CLIPTextModel(_TextTower):
    model_type = "clip_text_model"
    default_sharding = CLIPSharding
