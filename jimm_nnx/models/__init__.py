"""NNX models with the `jimm` surface, built from the `jimm_linen` modules through `bridge`.

The names, arguments and return values are `jimm`'s (`VisionTransformer`, `CLIP`, `SigLIP` and
their towers; `from_pretrained(model_name_or_path, use_pytorch=False, rngs=..., dtype=...,
param_dtype=..., sharding=..., use_gradient_checkpointing=..., attention_fn=...)`,
`from_config(config, ...)`, `save_pretrained(save_directory)`); what jimm has no word for
(`ImageTextOutput` via `outputs`, attention masks, hidden states, dropout keys) is keyword-only
beside it. No model math lives here.

Each model group is its own module, at jimm's paths: `vit`, `clip`, `siglip`, `dinov2`,
`dinov3` (each `<group>/model.py`, re-exported by the package with its `sharding`); what they
share is `base` (`PretrainedModel`, `RngsArg`) and `image_text` (CLIP's and SigLIP's common
classes). Every class is importable from here.
"""

from jimm_nnx.models.base import PretrainedModel, RngsArg
from jimm_nnx.models.vit import VisionTransformer
from jimm_nnx.models.image_text import _ImageText, _TextTower, _Tower, _VisionTower  # noqa: F401
from jimm_nnx.models.clip import CLIP, CLIPTextModel, CLIPVisionModel
from jimm_nnx.models.siglip import SigLIP, SigLIPTextModel, SigLIPVisionModel
from jimm_nnx.models.dinov2 import DINOv2Model
from jimm_nnx.models.dinov2.model import _DINO  # noqa: F401
from jimm_nnx.models.dinov3 import DINOv3Model
from jimm_nnx.sharding import (  # noqa: F401
    CLIPSharding, DINOv2Sharding, DINOv3Sharding, ShardingArg, SigLIPSharding, ViTSharding,
)

__all__ = ["CLIP", "CLIPTextModel", "CLIPVisionModel", "DINOv2Model", "DINOv3Model", "PretrainedModel", "RngsArg",
           "SigLIP", "SigLIPTextModel", "SigLIPVisionModel", "VisionTransformer"]
