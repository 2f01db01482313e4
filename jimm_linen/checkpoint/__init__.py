"""Checkpoints by job: `keys` (key tables, transforms, the strict load plan), `hf_files` (HF
safetensors / `.bin` files in and out), `engine` (the one load loop: read, stack, place)."""

from jimm_linen.checkpoint.hf_files import (
    PROGRESS_MIN_BYTES, SAFE_INDEX, SAFE_WEIGHTS, TORCH_INDEX, TORCH_WEIGHTS, StateReader, progress, weight_files, write_state_dict,
)
from jimm_linen.checkpoint.keys import (
    FLATTEN, IDENTITY, CheckpointError, ConvKernel, DropLeading, Flatten, Fused, KeyMap, LinearKernel, Rule, Source,
    Transform, encoder_rules, flatten_tree, linear, linen_to_hf, norm, plan_load, unflatten_tree,
)

__all__ = [
    "FLATTEN", "IDENTITY", "PROGRESS_MIN_BYTES", "SAFE_INDEX", "SAFE_WEIGHTS", "TORCH_INDEX", "TORCH_WEIGHTS", "CheckpointError",
    "ConvKernel", "DropLeading", "Flatten", "Fused", "KeyMap", "LinearKernel", "Rule", "Source", "StateReader",
    "Transform", "encoder_rules", "flatten_tree", "linear", "linen_to_hf", "norm", "plan_load", "progress",
    "unflatten_tree", "weight_files", "write_state_dict",
]
