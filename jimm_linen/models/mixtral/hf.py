"""HF `MixtralForCausalLM` <-> jimm `Mixtral` key table: Llama's attention and norms, and each
layer's mixture of experts (`moe_keymap`, which Qwen3-MoE's table uses too)."""

from __future__ import annotations

from jimm_linen import checkpoint as ckpt
from jimm_linen.models.llama import hf as llama_hf

MOE = "decoder/layers_{i}/moe"


def moe_keymap(config, hub: str, memory: str, names: dict[str, str]) -> ckpt.KeyMap:
    """Llama's table plus each MoE layer's router (`<prefix>.gate`) and experts, under the
    hub's module name `hub` (`model.layers.{i}.<hub>`: what `save_pretrained` writes, and we
    write) and, read only, transformers 5's in-memory name `memory` (its fused 3-D expert
    tensors; its per-expert names too where they differ from the hub's). `names`: the experts'
    gate, up and down projections (`wi_0`, `wi_1`, `wo`)."""
    base = llama_hf.keymap(config)
    layer = "model.layers.{i}"
    rules, hub_fused = ckpt.experts(f"{layer}.{hub}.experts", MOE, names)
    rules.append(ckpt.Rule(f"{layer}.{hub}.gate.weight", f"{MOE}/router/kernel", ckpt.LinearKernel()))
    aliases = list(base.aliases)
    if memory != hub:
        per_expert, fused = ckpt.experts(f"{layer}.{memory}.experts", MOE, names)
        aliases += [*per_expert, *fused,
                    ckpt.Rule(f"{layer}.{memory}.gate.weight", f"{MOE}/router/kernel", ckpt.LinearKernel())]
    else:
        aliases += hub_fused
    return ckpt.KeyMap([*base.rules, *rules], aliases, tied=base.tied)


def keymap(config) -> ckpt.KeyMap:
    """The hub's `block_sparse_moe.experts.{e}.w1 / w3 / w2` (gate, up, down) and
    `block_sparse_moe.gate`; transformers 5 calls the module `mlp`."""
    return moe_keymap(config, "block_sparse_moe", "mlp", {"wi_0": "w1", "wi_1": "w3", "wo": "w2"})
