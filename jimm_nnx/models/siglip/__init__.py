"""`jimm.models.siglip`'s path to the classes of `jimm_nnx.models`."""

from jimm_nnx.models import SigLIP, SigLIPTextModel, SigLIPVisionModel
from jimm_nnx.models.siglip.sharding import SigLIPSharding

__all__ = ["SigLIP", "SigLIPTextModel", "SigLIPVisionModel", "SigLIPSharding"]
