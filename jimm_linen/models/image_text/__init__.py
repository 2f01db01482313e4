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
