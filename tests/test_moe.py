"""The mixture-of-experts block (`jimm_linen/layers/moe.py`) against HF's own Mixtral and
Qwen3-MoE sparse blocks and load-balancing loss (weights copied in, every tensor random), and its
ragged and tiled paths against its dense reference path: outputs and gradients, for any routing,
with no token dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jimm_linen.layers.moe import MoeBlock, load_balancing_loss, per_expert, route, tile_rows
from tests.helpers import assert_close

E, K, D, F = 8, 2, 16, 12  # experts, top-k, width, expert width


def hf_block(family: str, norm_topk_prob: bool = True, seed: int = 0):
    """HF's sparse MoE block with every tensor random, and the same weights as our params."""
    torch.manual_seed(seed)
    if family == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        config = MixtralConfig(hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)
        block = MixtralSparseMoeBlock(config)
    else:
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

        config = Qwen3MoeConfig(hidden_size=D, moe_intermediate_size=F, num_experts=E, num_experts_per_tok=K,
                                norm_topk_prob=norm_topk_prob)
        block = Qwen3MoeSparseMoeBlock(config)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    block.eval()
    gate_up = block.experts.gate_up_proj.detach().numpy()
    params = {"router": {"kernel": block.gate.weight.detach().numpy().T},
              "wi_0": gate_up[:, :F].transpose(0, 2, 1), "wi_1": gate_up[:, F:].transpose(0, 2, 1),
              "wo": block.experts.down_proj.detach().numpy().transpose(0, 2, 1)}
    return block, jax.tree.map(jnp.asarray, params)


def ours(implementation="ragged", norm_topk_prob=True, **kw):
    return MoeBlock(num_experts=E, top_k=K, mlp_dim=F, norm_topk_prob=norm_topk_prob,
                    implementation=implementation, **kw)


def tokens(b=3, t=7, seed=1):
    return np.random.default_rng(seed).standard_normal((b, t, D)).astype(np.float32)


@pytest.mark.parametrize("family,norm", [("mixtral", True), ("qwen3_moe", True), ("qwen3_moe", False)])
def test_matches_hf_sparse_block(family, norm):
    block, params = hf_block(family, norm)
    x = tokens()
    with torch.no_grad():
        ref = block(torch.from_numpy(x)).numpy()
        ref_logits = block.gate(torch.from_numpy(x))[0].numpy()
    for implementation in ("ragged", "tiled", "dense"):
        y, logits = jax.jit(ours(implementation, norm).apply)({"params": params}, jnp.asarray(x))
        assert_close(np.asarray(logits).reshape(-1, E), ref_logits, what=f"{implementation} router logits")
        assert_close(np.asarray(y), ref, what=f"{implementation} output")


def test_uneven_routing_some_experts_get_no_token():
    """A batch whose router sends most tokens to a few experts: some experts receive no token."""
    _, params = hf_block("mixtral", seed=3)
    params["router"]["kernel"] = params["router"]["kernel"].at[:, :3].multiply(8.0)
    x = jnp.asarray(tokens(2, 5, seed=4))
    _, logits = ours().apply({"params": params}, x)
    chosen = np.asarray(route(logits, K, True)[1])
    assert len(np.unique(chosen)) < E
    dense = ours("dense").apply({"params": params}, x)[0]
    for implementation in ("ragged", "tiled"):
        assert_close(ours(implementation).apply({"params": params}, x)[0], dense, what=f"{implementation} vs dense")


def test_every_token_to_one_expert_drops_none():
    """All tokens pick expert 5 first (no capacity limit to overflow): each output is exactly
    the two chosen experts' MLPs weighted, computed token by token in numpy."""
    _, params = hf_block("mixtral", seed=5)
    x = tokens(4, 16, seed=6)
    direction = np.sign(x.reshape(-1, D).sum(0))
    xb = np.abs(x) * direction  # every token has a positive dot with `direction`
    kernel = np.zeros((D, E), np.float32)
    kernel[:, 5], kernel[:, 2] = direction, 0.5 * direction  # expert 5 first, expert 2 second
    params["router"]["kernel"] = jnp.asarray(kernel)
    y, logits = jax.jit(ours("ragged").apply)({"params": params}, jnp.asarray(xb))
    weights, chosen = route(logits.reshape(-1, E), K, True)
    assert (np.asarray(chosen) == [5, 2]).all()
    # 64 assignments each for experts 5 and 2: 4 tiles of 16 for each, the other 8 tiles empty.
    assert tile_rows(64 * K, E) == 16
    tiled = jax.jit(ours("tiled").apply)({"params": params}, jnp.asarray(xb))[0]
    p = jax.tree.map(np.asarray, params)

    def expert(e, v):
        g = v @ p["wi_0"][e]
        return ((g / (1 + np.exp(-g))) * (v @ p["wi_1"][e])) @ p["wo"][e]

    flat = xb.reshape(-1, D)
    want = np.stack([sum(np.asarray(weights)[n, j] * expert(int(chosen[n, j]), flat[n]) for j in range(K))
                     for n in range(flat.shape[0])])
    assert_close(np.asarray(y).reshape(-1, D), want, what="every token routed to expert 5")
    assert_close(np.asarray(tiled).reshape(-1, D), want, what="tiled, every token routed to expert 5")


def test_ragged_and_tiled_gradients_are_the_dense_gradients():
    _, params = hf_block("qwen3_moe", seed=7)
    x = jnp.asarray(tokens(2, 6, seed=8))

    def loss(p, implementation):
        y, logits = ours(implementation).apply({"params": p}, x)
        return jnp.sum(jnp.sin(y)) + 0.1 * jnp.sum(logits ** 2)

    dense = jax.jit(jax.grad(loss), static_argnums=1)(params, "dense")
    for implementation in ("ragged", "tiled"):
        grads = jax.jit(jax.grad(loss), static_argnums=1)(params, implementation)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            ref = dense
            for k in path:
                ref = ref[k.key]
            assert_close(g, ref, what=f"{implementation} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("family,in_compute_dtype", [("mixtral", False), ("qwen3_moe", True)])
def test_bf16_mixing_follows_each_family(family, in_compute_dtype):
    """Mixtral mixes with float32 routing weights, Qwen3-MoE with weights rounded to bf16. bf16
    matmuls round differently in XLA and torch, so no setting is bit exact; the family's own
    setting agrees with HF on more elements than the other one, and both stay within bf16's
    rounding of HF."""
    block, params = hf_block(family, seed=9)
    x = tokens(4, 16, seed=10)
    with torch.no_grad():
        ref = block.to(torch.bfloat16)(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    differing = {}
    for setting in (True, False):
        y = ours(weights_in_compute_dtype=setting, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16).apply(
            {"params": bf16}, jnp.asarray(x, jnp.bfloat16))[0]
        y = np.asarray(y, np.float32)
        np.testing.assert_allclose(y, ref, rtol=0, atol=2 ** -6 * np.abs(ref).max())
        differing[setting] = int((y != ref).sum())
    assert differing[in_compute_dtype] < differing[not in_compute_dtype], differing


def hf_aux_loss(family, logits, mask):
    if family == "mixtral":
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    else:
        from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
    per_layer = tuple(torch.from_numpy(np.asarray(layer).reshape(-1, E)) for layer in logits)
    return float(load_balancing_loss_func(per_layer, E, K, None if mask is None else torch.from_numpy(mask)))


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_load_balancing_loss_is_hfs_and_moves_with_the_mask(family):
    logits = np.random.default_rng(11).standard_normal((3, 2, 6, E)).astype(np.float32) * 2
    mask = np.ones((2, 6), np.int64)
    mask[0, :3] = 0  # left padding
    for m in (None, mask):
        want = hf_aux_loss(family, logits, m)
        got = float(load_balancing_loss(jnp.asarray(logits), K, None if m is None else jnp.asarray(m)))
        assert abs(got - want) <= 1e-5 * abs(want), (m is None, got, want)
    unmasked = float(load_balancing_loss(jnp.asarray(logits), K))
    masked = float(load_balancing_loss(jnp.asarray(logits), K, jnp.asarray(mask)))
    assert abs(unmasked - masked) > 1e-3


def test_per_expert_kernels_give_the_stacked_outputs_for_every_path():
    """Generation's decode steps read each expert's kernels from a buffer of its own
    (`per_expert`, split for the tiled path only); any path given them computes what it computes
    from the stacked kernels, and kernels of the wrong count or shape are named."""
    _, params = hf_block("qwen3_moe", seed=7)
    x = jnp.asarray(tokens(2, 3, seed=8))
    want = ours("dense").apply({"params": params}, x)[0]
    split = per_expert({"layers_0": {"moe": params}}, "tiled")["layers_0"]["moe"]
    assert all(isinstance(split[n], tuple) and len(split[n]) == E for n in ("wi_0", "wi_1", "wo"))
    assert split["wi_0"][3].shape == (D, F) and per_expert(params, "ragged") is params
    for implementation in ("tiled", "ragged", "dense"):
        assert_close(jax.jit(ours(implementation).apply)({"params": split}, x)[0], want, what=implementation)
    with pytest.raises(ValueError, match=r"^wo: 7 per-expert kernels of shapes \[\(12, 16\)\], expected 8 of \(12, 16\)"):
        ours("tiled").apply({"params": {**split, "wo": split["wo"][:7]}}, x)


def test_bad_settings_are_named():
    x = jnp.zeros((1, 2, D))
    with pytest.raises(ValueError, match=r"MoE implementation must be one of \('auto', 'ragged', 'tiled', 'dense'\), "
                                         r"got 'sparse'"):
        ours("sparse").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"top_k 9 must lie in \[1, num_experts=8\]"):
        MoeBlock(num_experts=E, top_k=9, mlp_dim=F).init(jax.random.key(0), x)
