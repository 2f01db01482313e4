"""Gemma 3 (text): Gemma 2's block and model. Its config supplies what differs: the q/k
RMSNorms (`qk_norm="head"`, Gemma's `1 + w`), a RoPE per layer kind (`rope_for`: local and
global thetas and scalings), `layer_types` from `sliding_window_pattern`, soft-caps off."""

from __future__ import annotations

from jimm_linen.models.gemma2.model import Gemma2
from jimm_linen.models.gemma3.config import Gemma3Config


class Gemma3(Gemma2):
    config: Gemma3Config
