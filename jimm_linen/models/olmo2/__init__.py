from jimm_linen.models.olmo2.config import Olmo2Config
from jimm_linen.models.olmo2.model import Olmo2, Olmo2Block

__all__ = ["Olmo2", "Olmo2Block", "Olmo2Config"]
