from jimm_linen.models.clip.config import CLIPConfig, SigLIPConfig, TextConfig
from jimm_linen.models.clip.losses import contrastive_loss, sigmoid_loss
from jimm_linen.models.clip.model import CLIP, ImageTextOutput, SigLIP, TextTransformer, split_tower
from jimm_linen.models.clip.zero_shot import (
    ZeroShotClassifier, class_embeddings, image_embeddings, prompts, zero_shot_logits,
)

__all__ = ["CLIP", "CLIPConfig", "ImageTextOutput", "SigLIP", "SigLIPConfig", "TextConfig",
           "TextTransformer", "contrastive_loss", "sigmoid_loss", "split_tower"]
__all__ += ["ZeroShotClassifier", "class_embeddings", "image_embeddings", "prompts", "zero_shot_logits"]
