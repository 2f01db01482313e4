"""jimm's NNX API (`VisionTransformer.from_pretrained(...)`, `from_config`, `save_pretrained`,
`sharding=`), built from the `jimm_linen` models through `bridge`: no model math lives here."""

from jimm_linen import make_tokamax_attention
from jimm_nnx.models import (
    CLIP, CLIPTextModel, CLIPVisionModel, DINOv2Model, DINOv3Model, PretrainedModel, SigLIP, SigLIPTextModel,
    SigLIPVisionModel, VisionTransformer,
)
from jimm_nnx.causal_lm import CausalLM, Llama, Olmo2, Qwen3
from jimm_nnx.sharding import NoSharding, Sharding
from jimm_nnx.training import make_train_step, set_train_state, train_state

__all__ = ["CLIP", "CLIPTextModel", "CLIPVisionModel", "CausalLM", "DINOv2Model", "DINOv3Model", "Llama", "NoSharding",
           "Olmo2", "PretrainedModel", "Qwen3", "Sharding", "SigLIP", "SigLIPTextModel", "SigLIPVisionModel",
           "VisionTransformer", "make_tokamax_attention", "make_train_step", "set_train_state", "train_state"]
