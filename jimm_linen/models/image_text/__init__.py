from jimm_linen.models.image_text.config import CLIPConfig, SigLIPConfig, TextConfig
from jimm_linen.models.image_text.losses import contrastive_loss, sigmoid_loss
from jimm_linen.models.image_text.model import CLIP, SigLIP, TextTransformer, split_tower, tower_module
from jimm_linen.outputs import ImageTextOutput
from jimm_linen.models.image_text.zero_shot import (
    ZeroShotClassifier, class_embeddings, image_embeddings, prompts, zero_shot_logits,
)

__all__ = ["CLIP", "CLIPConfig", "ImageTextOutput", "SigLIP", "SigLIPConfig", "TextConfig",
           "TextTransformer", "contrastive_loss", "sigmoid_loss", "split_tower", "tower_module"]
__all__ += ["ZeroShotClassifier", "class_embeddings", "image_embeddings", "prompts", "zero_shot_logits"]

from jimm_linen.models.image_text import hf as _hf  # noqa: E402
from jimm_linen.models.image_text.config import (  # noqa: E402
    tower_from_hf_config, tower_model_type, tower_to_hf_config,
)
from jimm_linen.models.vit import ViT  # noqa: E402
from jimm_linen.registry import Family  # noqa: E402


def _tower(model_type: str, module_cls, keymap) -> Family:
    def owns(config) -> bool:
        try:
            return tower_model_type(config) == model_type
        except ValueError:  # a plain ViT config: the vit family's
            return False

    return Family(model_type, module_cls, keymap, from_hf=tower_from_hf_config, to_hf=tower_to_hf_config, owns=owns)


FAMILIES = (
    Family("clip", CLIP, _hf.clip_keymap, CLIPConfig.from_hf_config),
    Family("siglip", SigLIP, _hf.siglip_keymap, SigLIPConfig.from_hf_config),
    _tower("clip_vision_model", ViT, _hf.clip_vision_keymap),
    _tower("clip_text_model", TextTransformer, _hf.clip_text_keymap),
    _tower("siglip_vision_model", ViT, _hf.siglip_vision_keymap),
    _tower("siglip_text_model", TextTransformer, _hf.siglip_text_keymap),
)
