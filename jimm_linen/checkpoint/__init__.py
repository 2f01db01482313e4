"""Checkpoints by job: `keys` (key tables, transforms, the strict load plan, the errors),
`hf_files` (HF safetensors / `.bin` files and their JSON in and out), `npz` (big_vision `.npz`
files: the lazy reader, prefixes and subtrees, scanned layers, old layouts), `engine` (the one
load loop: read, stack, place). The big_vision config translation and its load are
`jimm_linen.big_vision`."""

from jimm_linen.checkpoint import npz
from jimm_linen.checkpoint.hf_files import (
    PROGRESS_MIN_BYTES, SAFE_INDEX, SAFE_WEIGHTS, TORCH_INDEX, TORCH_WEIGHTS, StateReader, progress, read_json,
    weight_files, write_state_dict,
)
from jimm_linen.checkpoint.keys import (
    FLATTEN, IDENTITY, CheckpointError, CheckpointFileError, Conv1DKernel, ConvKernel, DropLeading, Flatten, Fused,
    KeyMap, LinearKernel, Permute, Plan, Rule, Source, StackedSource, Transform, encoder_rules, experts,
    flatten_tree, linear, linen_to_hf, norm, plan_load, unflatten_tree,
)

__all__ = [
    "FLATTEN", "IDENTITY", "PROGRESS_MIN_BYTES", "SAFE_INDEX", "SAFE_WEIGHTS", "TORCH_INDEX", "TORCH_WEIGHTS",
    "CheckpointError", "CheckpointFileError", "Conv1DKernel", "ConvKernel", "DropLeading", "Flatten", "Fused",
    "KeyMap", "LinearKernel", "Permute", "Plan", "Rule", "Source", "StackedSource", "StateReader", "Transform",
    "encoder_rules", "experts", "flatten_tree", "linear", "linen_to_hf", "norm", "npz", "plan_load", "progress", "read_json", "unflatten_tree",
    "weight_files", "write_state_dict",
]
