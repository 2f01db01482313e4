"""The old name of `jimm_linen.models.image_text` (CLIP, SigLIP, the text tower, losses,
zero-shot), kept so that code written against it still imports."""

from jimm_linen.models.image_text import *  # noqa: F403
from jimm_linen.models.image_text import __all__  # noqa: F401
