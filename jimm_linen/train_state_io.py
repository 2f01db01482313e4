"""Resumable training checkpoints with Orbax: a `training.TrainState` (params, optimizer state,
step) per step directory under one root. (Model weights in HF safetensors or big_vision `.npz`
files are `jimm_linen.checkpoint`'s business, not this module's.)

`save(directory, state)` writes `directory/<step>` and waits until it is on disk;
`restore(directory, target)` reads the latest step (or `step=`) into the shapes, dtypes and
shardings of `target`: `training.abstract_train_state(module, tx, mesh=..., rules=...)` for any
mesh and rules (the checkpoint does not remember where it was written from), or a live state
whose arrays' shardings are kept. The tree is the one both APIs see: `jimm_nnx.train_state(model,
optimizer)` is the same `TrainState`, so a checkpoint written by a Linen loop resumes an NNX one
and back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _manager(directory: str | os.PathLike, max_to_keep: int | None = None, create: bool = False):
    path = Path(directory).absolute()  # orbax wants absolute paths
    if not create and not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {path}")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    return ocp.CheckpointManager(path, options=options)


def save(directory: str | os.PathLike, state: Any, step: int | None = None, *,
         max_to_keep: int | None = None) -> Path:
    """Write `state` (a `TrainState`, or any pytree of arrays) as step `step` (default
    `state.step`) under `directory`, and return that step's directory once it is complete.
    `max_to_keep` deletes the oldest steps beyond that many. Saving a step that exists is an
    error."""
    if step is None:
        if not hasattr(state, "step"):
            raise ValueError("pass step= to save a state without a `step` field")
        step = int(state.step)
    with _manager(directory, max_to_keep, create=True) as manager:
        if step in manager.all_steps():
            raise ValueError(f"step {step} already exists in {manager.directory}")
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        return Path(manager.directory) / str(step)


def all_steps(directory: str | os.PathLike) -> list[int]:
    """The steps saved under `directory`, oldest first."""
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest step under `directory` (None when there is none)."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def _abstract(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    raise TypeError(f"a restore target holds arrays or jax.ShapeDtypeStruct leaves, got {type(leaf).__name__}")


def restore(directory: str | os.PathLike, target: Any, step: int | None = None) -> Any:
    """The state saved at `step` (default: the latest) under `directory`, with the structure,
    shapes, dtypes and shardings of `target` (`jax.ShapeDtypeStruct`s, e.g.
    `training.abstract_train_state(module, tx, mesh=mesh, rules="tp")`, or arrays: a live
    state of the same model). Each array is read straight into its target sharding."""
    with _manager(directory) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint step in {manager.directory}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise FileNotFoundError(f"no step {step} in {manager.directory}; saved steps: {sorted(steps)}")
        abstract = jax.tree.map(_abstract, target)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
