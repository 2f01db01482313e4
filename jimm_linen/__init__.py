"""jimm_linen: the canonical Flax Linen models of jimm."""

from jimm_linen.layers.attention_fns import dot_product_attention, make_tokamax_attention
from jimm_linen.models.dino import DINOv2, DINOv2Config, DINOv3, DINOv3Config
from jimm_linen.models.image_text import (
    CLIP, CLIPConfig, ImageTextOutput, SigLIP, SigLIPConfig, TextConfig, TextTransformer, contrastive_loss,
    sigmoid_loss,
)
from jimm_linen.layers.kv_cache import KVCache
from jimm_linen.models.decoder import CausalLM, CausalLMConfig
from jimm_linen.models.vit import TowerOutput, ViT, ViTConfig
from jimm_linen.outputs import CausalLMOutput, GenerationOutput

__all__ = ["CLIP", "CLIPConfig", "CausalLM", "CausalLMConfig", "CausalLMOutput", "DINOv2", "DINOv2Config", "DINOv3",
           "DINOv3Config", "GenerationOutput", "ImageTextOutput", "KVCache", "SigLIP", "SigLIPConfig", "TextConfig", "TextTransformer",
           "TowerOutput", "ViT", "ViTConfig", "contrastive_loss", "dot_product_attention", "make_tokamax_attention",
           "sigmoid_loss"]

from jimm_linen.pretrained import from_pretrained, save_pretrained  # noqa: E402
from jimm_linen.registry import decoders as _decoders  # noqa: E402

__all__ += ["from_pretrained", "save_pretrained"]

# Every decoder family's module and config (Llama, LlamaConfig, ...), from the registry.
for _fam in _decoders().values():
    for _cls in (_fam.module_cls, _fam.config_cls):
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)

# HF processors for inputs (load_processor, prepare, to_model_inputs) and zero-shot classification.
from jimm_linen import preprocess  # noqa: E402,F401
from jimm_linen.models.image_text import ZeroShotClassifier  # noqa: E402

__all__ += ["ZeroShotClassifier"]

from jimm_linen import big_vision  # noqa: E402,F401  (big_vision.load_npz: big_vision .npz checkpoints)

from jimm_linen import generation  # noqa: E402,F401  (stream, the sampling filters)
from jimm_linen.generation import generate  # noqa: E402

__all__ += ["generate"]
