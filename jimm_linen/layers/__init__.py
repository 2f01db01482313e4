"""Linen building blocks shared by every model."""

from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.core import DenseGeneral, LayerNorm
from jimm_linen.layers.embed import PatchEmbedding, check_images, resize_position_grid, torch_bicubic_matrix
from jimm_linen.layers.mlp import MlpBlock
from jimm_linen.layers.pooling import MAPHead
from jimm_linen.layers.transformer import (
    Encoder, EncoderBlock, loop_to_scan, remat_policy, scan_groups, scan_to_loop,
)

__all__ = [
    "DenseGeneral", "Encoder", "EncoderBlock", "LayerNorm", "MAPHead", "MlpBlock",
    "MultiHeadAttention", "PatchEmbedding", "check_images", "loop_to_scan", "remat_policy",
    "resize_position_grid", "scan_groups", "scan_to_loop", "torch_bicubic_matrix",
]
