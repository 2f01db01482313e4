"""HF `Qwen3MoeForCausalLM` <-> jimm `Qwen3Moe` key table: Llama's names (q_norm / k_norm, and the
dense layers' `mlp`), and in the MoE layers `mlp.gate` and `mlp.experts.{e}.gate_proj / up_proj /
down_proj` (transformers 5's fused `mlp.experts.gate_up_proj` / `down_proj` read too)."""

from __future__ import annotations

from jimm_linen.models.mixtral.hf import moe_keymap


def keymap(config):
    return moe_keymap(config, "mlp", "mlp", {"wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"})
