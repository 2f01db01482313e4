"""SigLIP with jimm's NNX surface: `SigLIP` and its towers `SigLIPVisionModel`, `SigLIPTextModel`."""

from __future__ import annotations

from flax import nnx

from jimm_linen.models import image_text as linen_clip
from jimm_nnx.models.image_text import _ImageText, _TextTower, _VisionTower
from jimm_nnx.sharding import SigLIPSharding


class SigLIP(_ImageText):
    """`jimm_linen.SigLIP` as an `nnx.Module`: `model(image, text)`."""

    linen_cls = linen_clip.SigLIP
    config_cls = linen_clip.SigLIPConfig
    model_type = "siglip"
    default_sharding = SigLIPSharding

    @property
    def logit_bias(self) -> nnx.Variable:
        return self.b


class SigLIPVisionModel(_VisionTower):
    model_type = "siglip_vision_model"
    full_cls = linen_clip.SigLIPConfig
    default_sharding = SigLIPSharding


class SigLIPTextModel(_TextTower):
    model_type = "siglip_text_model"
    full_cls = linen_clip.SigLIPConfig
    default_sharding = SigLIPSharding
