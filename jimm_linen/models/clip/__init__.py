from jimm_linen.models.clip.config import CLIPConfig, SigLIPConfig, TextConfig
from jimm_linen.models.clip.losses import contrastive_loss, sigmoid_loss
from jimm_linen.models.clip.model import CLIP, ImageTextOutput, SigLIP, TextTransformer

__all__ = ["CLIP", "CLIPConfig", "ImageTextOutput", "SigLIP", "SigLIPConfig", "TextConfig",
           "TextTransformer", "contrastive_loss", "sigmoid_loss"]
