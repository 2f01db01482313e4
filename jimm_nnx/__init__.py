"""jimm's NNX API, built from the `jimm_linen` models through `bridge`: no model math lives here.

`import jimm_nnx as jimm` gives the `jimm` library's names and module paths
(`jimm.VisionTransformer.from_pretrained(...)`, `from_config`, `save_pretrained`, `sharding=`,
`jimm.common.sharding.NoSharding`, `jimm.models.clip.sharding.CLIPSharding`,
`make_tokamax_attention`, the tokamax autotuning helpers), plus our own additions
(`Sharding(rules, mesh)`, `PretrainedModel`, `ImageTextOutput` via `CLIP.outputs`).
"""

from jimm_linen import make_tokamax_attention
from jimm_nnx import common, models  # noqa: F401  (jimm's module paths: jimm.common.sharding, ...)
from jimm_nnx.autotuning import AutotuningResult, autotune, autotuned_fn, cached_autotune, load_autotune_result
from jimm_nnx.common.tokamax_attention import tokamax_attention_fn as tokamax_attention
from jimm_nnx.models import (
    CLIP, CLIPTextModel, CLIPVisionModel, DINOv2Model, DINOv3Model, PretrainedModel, SigLIP, SigLIPTextModel,
    SigLIPVisionModel, VisionTransformer,
)
from jimm_nnx.causal_lm import FAMILY_CLASSES, CausalLM
from jimm_nnx.sharding import (
    CLIPSharding, DINOv2Sharding, DINOv3Sharding, NoSharding, Sharding, ShardingSpec, SigLIPSharding, ViTSharding,
)
from jimm_nnx.training import make_train_step, set_train_state, train_state

__all__ = [
    "AutotuningResult", "CLIP", "CLIPSharding", "CLIPTextModel", "CLIPVisionModel", "CausalLM", "DINOv2Model",
    "DINOv2Sharding", "DINOv3Model", "DINOv3Sharding", "NoSharding", "PretrainedModel",
    "Sharding", "ShardingSpec", "SigLIP", "SigLIPSharding", "SigLIPTextModel", "SigLIPVisionModel", "ViTSharding",
    "VisionTransformer", "autotune", "autotuned_fn", "cached_autotune", "load_autotune_result",
    "make_tokamax_attention", "make_train_step", "set_train_state", "tokamax_attention", "train_state",
]

# Every decoder family's class (Llama, Qwen3, Olmo2, ...), from jimm_linen's registry.
globals().update({cls.__name__: cls for cls in FAMILY_CLASSES.values()})
__all__ += [cls.__name__ for cls in FAMILY_CLASSES.values()]
