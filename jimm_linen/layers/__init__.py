"""Linen building blocks shared by every model."""

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.attention_fns import dot_product_attention, make_tokamax_attention
from jimm_linen.layers.embed import PatchEmbedding, check_images, resize_position_grid, torch_bicubic_matrix
from jimm_linen.layers.encoder import BLOCK_OPTIONS, Encoder, EncoderBlock, LayerScale
from jimm_linen.layers.linear import DenseGeneral
from jimm_linen.layers.mlp import GatedMlpBlock, MlpBlock
from jimm_linen.layers.norm import LayerNorm
from jimm_linen.layers.pooling import MAPHead
from jimm_linen.layers.rope import apply_rotary, patch_rope
from jimm_linen.layers.stack import (
    BLOCK_NAMES, loop_to_scan, remat_policy, scan_groups, scan_to_loop, stack, unstack_paths,
)

__all__ = [
    "BLOCK_NAMES", "BLOCK_OPTIONS", "DenseGeneral", "Encoder", "EncoderBlock", "GatedMlpBlock", "LayerNorm",
    "LayerScale", "MAPHead", "MlpBlock", "MultiHeadAttention", "PatchEmbedding", "apply_rotary", "check_images",
    "dot_product_attention", "loop_to_scan", "make_tokamax_attention", "patch_rope", "remat_policy",
    "resize_position_grid", "scan_groups", "scan_to_loop", "stack", "torch_bicubic_matrix", "unstack_paths",
]
