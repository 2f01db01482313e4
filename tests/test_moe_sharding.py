"""Mixtral on 8 fake CPU devices (tests/conftest.py sets XLA_FLAGS), a `("data", "fsdp",
"tensor")` = (2, 2, 2) mesh, under expert parallelism: the `ep` preset (whole experts over
"tensor", the rest FSDP + TP) and FSDP with the experts over "tensor". Each expert's tensors are
read only for the devices that hold that expert, straight into place; the forward pass (router
logits and HF's `aux_loss` included) and a KV-cache decode step give HF's unsharded numbers;
AdamW steps on the loss with its auxiliary term start at HF's loss and lower it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

import jimm_linen
from jimm_linen import checkpoint as ckpt
from jimm_linen import partitioning as pt
from jimm_linen import training
from jimm_nnx import reference as parity
from tests import lm_checkpoints as lmc
from tests.helpers import assert_close

# Sizes that divide the mesh: 8 experts over tensor (2), embed 32 over fsdp (2), 4 query / 2
# key-value heads over tensor, batch 4 over data x fsdp.
MIXTRAL = dict(lmc.LLAMA, intermediate_size=24, num_local_experts=8, num_experts_per_tok=2,
               output_router_logits=True, router_aux_loss_coef=0.1)
EP_RULES = {"ep": "ep", "fsdp+ep": pt.make_rules("fsdp", additional_rules=[("experts", "tensor"),
                                                                            ("act_experts", "tensor")])}
_ = None
# Linen path -> spec per rule set; the scanned `layers` axis stays whole.
MOE = "decoder/layers/moe"
SPECS = {"ep": {f"{MOE}/wi_0": (_, "tensor", "fsdp", _), f"{MOE}/wo": (_, "tensor", _, "fsdp"),
                f"{MOE}/router/kernel": (_, "fsdp", "tensor"),
                "decoder/layers/self_attention/query/kernel": (_, "fsdp", "tensor", _)},
         "fsdp+ep": {f"{MOE}/wi_0": (_, "tensor", "fsdp", _), f"{MOE}/wo": (_, "tensor", _, "fsdp"),
                     f"{MOE}/router/kernel": (_, "fsdp", "tensor"),
                     "decoder/layers/self_attention/query/kernel": (_, "fsdp", _, _)}}


def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def flat(tree) -> dict:
    return ckpt.flatten_tree(tree)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random `MixtralForCausalLM`, the left-padded batch, HF's outputs on it (its `labels=`
    loss with `router_aux_loss_coef * aux_loss`), and on one more token after it."""
    import torch

    directory = tmp_path_factory.mktemp("mixtral-ep")
    hf = parity.build_decoder_reference("mixtral", MIXTRAL, directory, seed=5)
    data = lmc.batch()
    ids, mask = data["input_ids"], data["attention_mask"]
    out = lmc.hf_forward(hf, ids, mask)
    next_ids = ids[:, -1:][::-1].copy()
    longer = lmc.hf_forward(hf, np.concatenate([ids, next_ids], 1), np.concatenate([mask, np.ones_like(next_ids, bool)], 1))
    assert out.aux_loss is not None and torch.isfinite(out.loss)
    return dict(directory=directory, data=data, loss=out.loss.item(), aux_loss=out.aux_loss.item(),
                logits=out.logits.numpy(), next_ids=next_ids, step_logits=longer.logits.numpy()[:, -1:])


def record_reads(monkeypatch) -> list[tuple[str, tuple[int, ...], tuple[tuple[int, int], ...]]]:
    reads = []
    get_region = ckpt.StateReader.get_region

    def recording(self, key, index):
        shape = self.shapes[key]
        reads.append((key, shape, tuple(s.indices(n)[:2] for s, n in zip(index, shape))))
        return get_region(self, key, index)

    monkeypatch.setattr(ckpt.StateReader, "get_region", recording)
    return reads


@pytest.mark.parametrize("name", list(EP_RULES))
def test_experts_load_into_place_and_the_sharded_model_gives_hfs_outputs(checkpoint, monkeypatch, name):
    rules, m = EP_RULES[name], mesh()
    reads = record_reads(monkeypatch)
    model, variables = jimm_linen.from_pretrained(checkpoint["directory"], mesh=m, rules=rules)
    placed = flat(variables["params"])
    for path, spec in SPECS[name].items():
        arr = placed[path]
        assert tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec)) == spec, (path, arr.sharding)
        assert arr.addressable_shards[0].data.size < arr.size, path
    # A device holds 4 of the 8 experts and half of each one's embed dim: an expert's tensor is
    # read once per half, for the devices holding that expert (not once per device box).
    expert_reads: dict[str, list] = {}
    for key, shape, region in reads:
        if ".experts." in key:
            expert_reads.setdefault(key, []).append(region)
            assert np.prod([b - a for a, b in region]) == np.prod(shape) // 2, (key, region)
    assert len(expert_reads) == 2 * 8 * 3 and all(len(r) == 2 for r in expert_reads.values())

    data = checkpoint["data"]
    inputs = [jax.device_put(x, pt.data_sharding(x.shape, m, rules))
              for x in (data["input_ids"], data["attention_mask"], checkpoint["next_ids"])]

    def run(v, ids, mask, next_ids):
        out = model.apply(v, ids, mask, output_router_logits=True)
        _, cache = model.apply(v, ids, mask, cache=model.init_cache(ids.shape[0], ids.shape[1] + 2))
        step, _ = model.apply(v, next_ids, jnp.ones_like(next_ids, bool), cache=cache)
        return out.logits, out.aux_loss, step

    with pt.activation_sharding(m, rules):
        logits, aux_loss, step = jax.jit(run)(variables, *inputs)
    mask = data["attention_mask"]
    assert_close(np.asarray(logits)[mask], checkpoint["logits"][mask], what=f"{name} logits")
    assert abs(float(aux_loss) - checkpoint["aux_loss"]) <= 1e-5 * checkpoint["aux_loss"], (name, float(aux_loss))
    assert_close(step, checkpoint["step_logits"], what=f"{name} decode step")


def test_adamw_steps_with_the_aux_loss_under_ep_lower_the_loss(checkpoint):
    m, tx = mesh(), optax.adamw(1e-2, weight_decay=0.1)
    model, variables = jimm_linen.from_pretrained(checkpoint["directory"], mesh=m, rules="ep")
    assert model.config.output_router_logits  # the checkpoint's config asks for the auxiliary term
    state = training.init_train_state(model, tx, variables["params"], mesh=m, rules="ep")
    step = training.make_train_step(model, tx, mesh=m, rules="ep", chunk_size=4)
    losses = []
    for i in range(3):
        state, metrics = step(state, checkpoint["data"])
        losses.append(float(metrics["loss"]))
        if i == 0:
            assert_close(metrics["loss"], checkpoint["loss"], what="first loss vs HF's")
            assert_close(metrics["aux_loss"], MIXTRAL["router_aux_loss_coef"] * checkpoint["aux_loss"], what="aux term")
            assert_close(metrics["loss"], metrics["cross_entropy"] + metrics["aux_loss"], what="loss = CE + aux term")
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    wi_0 = flat(state.params)[f"{MOE}/wi_0"]
    assert wi_0.sharding.spec[1] == "tensor"
    for moment in (state.opt_state[0].mu, state.opt_state[0].nu):  # moments sit on their params' shardings
        assert flat(moment)[f"{MOE}/wi_0"].sharding == wi_0.sharding
