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
    return ocp.CheckpointManager(path, options=options, item_handlers=ocp.StandardCheckpointHandler())


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


def _key(entry) -> str:
    """One path entry as text, the same for a target's `TrainState` field (`GetAttrKey`) and
    the dict key Orbax stored it under."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _shapes(tree) -> dict[str, tuple]:
    return {"/".join(map(_key, path)): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _named(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _check_tree(manager, step: int, steps, abstract) -> None:
    """One error naming what differs between the tree saved at `step` and the target: the
    missing, unexpected and mis-shaped paths (a few of each) and how to pick another step.
    (Orbax's own is a page per path and suggests `strict=False`, which would pad or truncate.)"""
    metadata = manager.item_metadata(step)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:  # no metadata to compare with: Orbax checks while it reads
        return
    saved, wanted = _shapes(tree), _shapes(abstract)
    missing = sorted(wanted.keys() - saved.keys())
    unexpected = sorted(saved.keys() - wanted.keys())
    misshaped = sorted(k for k in wanted.keys() & saved.keys() if wanted[k] != saved[k])
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint ({_named(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, only in the checkpoint ({_named(unexpected)})")
    if misshaped:
        named = [f"{k} saved {saved[k]}, target {wanted[k]}" for k in misshaped]
        parts.append(f"{len(misshaped)} mis-shaped ({_named(named)})")
    raise ValueError(
        f"step {step} in {manager.directory} holds another tree than the restore target: "
        f"{'; '.join(parts)} (another model's or optimizer's state?). Restore another step with "
        f"restore(directory, target, step=...) (saved steps: {sorted(steps)}), or pass the target "
        f"of the model that wrote this one")


def restore(directory: str | os.PathLike, target: Any, step: int | None = None) -> Any:
    """The state saved at `step` (default: the latest) under `directory`, with the structure,
    shapes, dtypes and shardings of `target` (`jax.ShapeDtypeStruct`s, e.g.
    `training.abstract_train_state(module, tx, mesh=mesh, rules="tp")`, or arrays: a live
    state of the same model). Each array is read straight into its target sharding (and cast
    to its dtype). A step whose tree differs from the target's (another model's, another
    optimizer's) is a `ValueError` naming the step, the directory and the missing, unexpected
    and mis-shaped paths, before anything is read; `step=` picks another one."""
    with _manager(directory) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint step in {manager.directory}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise FileNotFoundError(f"no step {step} in {manager.directory}; saved steps: {sorted(steps)}")
        abstract = jax.tree.map(_abstract, target)
        _check_tree(manager, step, steps, abstract)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
