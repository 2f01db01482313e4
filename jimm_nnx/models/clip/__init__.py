"""`jimm.models.clip`'s path to the classes of `jimm_nnx.models`."""

from jimm_nnx.models import CLIP, CLIPTextModel, CLIPVisionModel
from jimm_nnx.models.clip.sharding import CLIPSharding

__all__ = ["CLIP", "CLIPTextModel", "CLIPVisionModel", "CLIPSharding"]
