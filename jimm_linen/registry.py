"""The model families: one entry per HF `model_type`, declared by the family's own package
(`jimm_linen/models/<family>/__init__.py` defines `FAMILIES`). Loading and saving
(`pretrained`), the package exports, the NNX classes, `jimm parity`, `jimm generate` and the
tests all derive from here, so adding a family is a directory and its entry, touching no
other file.

This module imports no model: the packages import it, and `families()` finds them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Family:
    """One HF `model_type`: its Linen module, key table and config reading / writing.

    Decoders also name their `config_cls` (its `architecture` is the HF model class), the NNX
    class `jimm_nnx` builds (`nnx_name`), and the configs `jimm parity` checks by default
    (`parity`: name -> HF config kwargs, small, every tensor random) and with `--full`
    (`parity_full`: real widths)."""

    model_type: str
    module_cls: type
    keymap: Callable[[Any], Any]
    from_hf: Callable[[dict], Any]  # config.json dict -> our config
    to_hf: Callable[[Any], dict] = lambda config: config.to_hf_config()
    # (config, checkpoint keys) -> config: what config.json leaves out but the weights show.
    adapt_config: Callable[[Any, Any], Any] = lambda config, keys: config
    # Which configs of `module_cls` this family writes (a ViT may be an HF ViT or a CLIP tower).
    owns: Callable[[Any], bool] = lambda config: True
    config_cls: type | None = None
    nnx_name: str | None = None
    parity: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    parity_full: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # The text part of a multimodal checkpoint (Gemma 3's `gemma3`), loaded as `module_cls`: a
    # reading entry only, no decoder family (no NNX class, parity configs or writing) of its own.
    text_part: bool = False

    @property
    def is_decoder(self) -> bool:
        from jimm_linen.models.decoder import CausalLM

        return issubclass(self.module_cls, CausalLM) and not self.text_part


def decoder_family(model_type: str, module_cls, config_cls, keymap, nnx_name: str, parity, parity_full=None) -> Family:
    """A decoder family's entry: the config reads and writes `config.json` itself."""
    return Family(model_type, module_cls, keymap, config_cls.from_hf_config, config_cls=config_cls,
                  nnx_name=nnx_name, parity=parity, parity_full=parity_full or {})


@functools.cache
def families() -> dict[str, Family]:
    """Every family, by `model_type`, from the packages under `jimm_linen.models`."""
    import jimm_linen.models as models

    out: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        for fam in getattr(importlib.import_module(f"{models.__name__}.{info.name}"), "FAMILIES", ()):
            if fam.model_type in out:
                raise ValueError(f"model_type {fam.model_type!r} is registered twice")
            out[fam.model_type] = fam
    return out


def decoders() -> dict[str, Family]:
    return {k: f for k, f in families().items() if f.is_decoder}


# The small decoder the parity configs start from (each varies heads, head_dim, rope, biases...).
SMALL_DECODER = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
