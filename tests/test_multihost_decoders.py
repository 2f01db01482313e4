"""A decoder across two processes: `jax.distributed` on localhost (gloo collectives), 4 fake CPU
devices each, one 8-device `("data", "fsdp", "tensor")` = (2, 2, 2) mesh. Each process loads its
slices of a random-weight Llama checkpoint (`rules="fsdp"`), generates greedily, feeds only its
own rows of the batch to an AdamW train step, saves the state with Orbax, restores it onto the
mesh and steps on; the NNX train step takes the same rows. Against the same run in one process with 8 devices: the same greedy tokens,
losses and train states; within each run, the restored state is the saved one and its next
step is the uninterrupted one's, bit for bit; a batch with an id past the vocabulary in one
process's rows is refused by both processes, before the donated state is touched.

Run as a script, this file is one of the two processes (`_worker`).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import jimm_linen
import jimm_nnx
from jimm_linen import partitioning as pt
from jimm_linen import train_state_io, training
from tests import lm_checkpoints as lmc
from tests.helpers import assert_close, assert_same_tree, processes

AXES = ("data", "fsdp", "tensor")
RULES = "fsdp"
TX = optax.adamw(1e-2, weight_decay=0.1)
CHUNK = 4
MAX_NEW_TOKENS = 6


def own_rows(mesh, n: int) -> list[int]:
    """The rows of a global batch of `n` that this process's devices hold under the train step's
    batch sharding: what this host's data loader feeds (in one process, every row)."""
    sharding = pt.data_sharding((n, 1), mesh, RULES)
    return sorted({r for index in sharding.addressable_devices_indices_map((n, 1)).values()
                   for r in range(*index[0].indices(n))})


def scenario(directory: str, checkpoints: str) -> dict:
    """Load, generate, step, save, restore and step on, on a mesh of every device of every
    process; the results gathered to host (each process gets all of them)."""
    mesh = jax.make_mesh((2, 2, 2), AXES)
    # Whole trees replicated in one program (not `process_allgather`'s one per leaf), then each
    # leaf read on this host.
    replicate = jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def gather(tree):
        return jax.tree.map(np.asarray, replicate(tree))

    model, variables = jimm_linen.from_pretrained(directory, mesh=mesh, rules=RULES)
    prompt = lmc.batch(0)
    with pt.activation_sharding(mesh, RULES):
        out = jimm_linen.generate(model, variables, prompt["input_ids"], prompt["attention_mask"],
                                  max_new_tokens=MAX_NEW_TOKENS)
    tokens = gather(out.sequences)

    state = training.init_train_state(model, TX, variables["params"], mesh=mesh, rules=RULES)
    step = training.make_train_step(model, TX, mesh=mesh, rules=RULES, chunk_size=CHUNK)
    rows = own_rows(mesh, lmc.BATCH)
    first, second = ({k: v[rows] for k, v in lmc.batch(seed, pad).items()}
                     for seed, pad in ((1, (2, 0, 4, 1)), (2, (0, 6, 0, 3))))
    bad = {k: v.copy() for k, v in first.items()}
    if jax.process_index() == jax.process_count() - 1:  # an id past the vocabulary in one process's rows
        bad["input_ids"][-1, -1] = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {model.config.vocab_size}\)"):
        step(state, bad)  # refused by every process (none waits in a collective), the state kept
    state, m1 = step(state, first)
    train_state_io.save(checkpoints, state)
    with jax.set_mesh(mesh):  # the NNX step, from the same checkpoint and rows
        lm = jimm_nnx.CausalLM.from_pretrained(directory)
        optimizer = nnx.Optimizer(lm, TX, wrt=nnx.Param)
        nnx_loss = float(jimm_nnx.make_train_step(chunk_size=CHUNK)(lm, optimizer, first)["loss"])
        nnx_state = gather(jimm_nnx.train_state(lm, optimizer))
    restored = train_state_io.restore(checkpoints, training.abstract_train_state(model, TX, mesh=mesh, rules=RULES))
    saved, restored_host = gather(state), gather(restored)
    resumed, m2_resumed = step(restored, second)
    state, m2 = step(state, second)
    return dict(tokens=tokens, losses=[float(m1["loss"]), float(m2["loss"])], resumed_loss=float(m2_resumed["loss"]),
                saved=saved, restored=restored_host, state=gather(state), resumed=gather(resumed),
                rows=rows, nnx_loss=nnx_loss, nnx_state=nnx_state)


def _worker(process_id: int, port: int, directory: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    result = scenario(directory, str(Path(out) / "checkpoints"))
    (Path(out) / f"result{process_id}.pkl").write_bytes(pickle.dumps(result))
    jax.distributed.shutdown()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    lmc.build_llama(directory)
    return directory


def test_two_processes_load_generate_train_and_resume_as_one(llama_dir, tmp_path):
    with processes(Path(__file__), [llama_dir, tmp_path / "two"]):
        one = scenario(str(llama_dir), str(tmp_path / "one" / "checkpoints"))
    results = [pickle.loads((tmp_path / "two" / f"result{i}.pkl").read_bytes()) for i in (0, 1)]

    # Each process feeds half the batch, process 0 the first half (as `training.place_batch` says).
    assert one["rows"] == [0, 1, 2, 3] and [r["rows"] for r in results] == [[0, 1], [2, 3]]
    for i, two in enumerate(results):
        for run, r in (("one process", one), (f"process {i}", two)):
            assert_same_tree(r["restored"], r["saved"], f"{run}: restored vs saved ")
            assert_same_tree(r["resumed"], r["state"], f"{run}: resumed vs uninterrupted step ")
            assert r["resumed_loss"] == r["losses"][1], run
            assert_close(r["nnx_loss"], r["losses"][0], what=f"{run}: NNX loss vs Linen")
            jax.tree.map(lambda x, y: assert_close(x, y, what=f"{run}: NNX state vs Linen"), r["nnx_state"], r["saved"])
        np.testing.assert_array_equal(two["tokens"], one["tokens"], err_msg=f"process {i}: greedy tokens")
        # Across the two layouts the collectives sum in another order (gloo between the
        # processes): equal to float32 rounding, the parity bound.
        assert_close(two["losses"], one["losses"], what=f"process {i} losses")
        jax.tree.map(lambda x, y: assert_close(x, y, what=f"process {i} state after two steps"),
                     two["state"], one["state"])
    # The generated continuation is not the prompt padded out: the model ran.
    assert (one["tokens"][:, -MAX_NEW_TOKENS:] != 0).any()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
