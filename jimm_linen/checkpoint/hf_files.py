"""HF checkpoint files: reading safetensors / `pytorch_model.bin` (single or sharded) lazily,
and writing safetensors the way `save_pretrained` does."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jimm_linen.checkpoint.keys import CheckpointError, CheckpointFileError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
PROGRESS_MIN_BYTES = 256 * 2**20  # show a progress bar only for checkpoints at least this big


def progress(items, total_bytes: int, desc: str):
    show = sys.stderr.isatty() and total_bytes >= PROGRESS_MIN_BYTES
    if not show:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="tensor")


def _torch_to_numpy(t) -> np.ndarray:
    import torch
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_json(path: Path) -> dict:
    """A JSON object file (`config.json`, a shard index), or `CheckpointFileError` naming it."""
    try:
        value = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise CheckpointFileError(f"invalid JSON in {path}: line {err.lineno} column {err.colno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise CheckpointFileError(f"invalid JSON in {path}: not text ({err.reason} at byte {err.start})") from err
    if not isinstance(value, dict):
        raise CheckpointFileError(f"invalid JSON in {path}: expected an object, got {type(value).__name__}")
    return value


def weight_files(directory: Path, prefer_pytorch: bool = False) -> list[Path]:
    """The weight files of an HF checkpoint directory, safetensors preferred (PyTorch's
    `pytorch_model.bin` with `prefer_pytorch`) where it has both."""
    formats = ((SAFE_WEIGHTS, SAFE_INDEX), (TORCH_WEIGHTS, TORCH_INDEX))
    for single, index in reversed(formats) if prefer_pytorch else formats:
        if (directory / index).exists():
            weight_map = read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
                raise CheckpointFileError(f"invalid shard index {directory / index}: no weight_map of key -> file name")
            shards = [directory / s for s in sorted(set(weight_map.values()))]
            missing = [str(f) for f in shards if not f.is_file()]
            if missing:
                raise CheckpointFileError(f"missing shard file(s) {', '.join(missing)}, named in {directory / index}")
            return shards
        if (directory / single).exists():
            return [directory / single]
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


class StateReader:
    """A lazy view of an HF checkpoint directory: `shapes` without reading data, `get(key)` reads
    one tensor (bf16 stays bf16, via ml_dtypes). Use as a context manager."""

    def __init__(self, directory: str | os.PathLike, prefer_pytorch: bool = False,
                 files: list[Path] | None = None):
        """`files` replaces the directory's own choice of weight files (see `weight_files`)."""
        self.files = files if files is not None else weight_files(Path(directory), prefer_pytorch)
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, object] = {}
        self._stack = contextlib.ExitStack()
        try:
            for f in self.files:
                self._index(f)
        except BaseException:
            self.close()
            raise

    def _index(self, f: Path) -> None:
        if f.suffix == ".safetensors":
            handle = self._stack.enter_context(_safe_open(f))
            for key in handle.keys():
                self._claim(key, f)
                self.shapes[key] = tuple(handle.get_slice(key).get_shape())
                self._where[key] = handle
        else:
            state = _torch_load(f)
            for key, tensor in state.items():
                self._claim(key, f)
                self.shapes[key] = tuple(tensor.shape)
                self._where[key] = state

    def _claim(self, key: str, f: Path) -> None:
        if key in self.shapes:
            raise CheckpointError(f"key {key} is in more than one weight file (again in {f.name})")

    def dtype(self, key: str) -> np.dtype:
        where = self._where[key]
        if isinstance(where, dict):
            return _torch_to_numpy(where[key].reshape(-1)[:0]).dtype
        return where.get_slice(key)[:0].dtype if self.shapes[key] else where.get_tensor(key).dtype

    def get(self, key: str) -> np.ndarray:
        where = self._where[key]
        if isinstance(where, dict):
            return _torch_to_numpy(where[key])
        return where.get_tensor(key)

    def get_region(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        """The box `index` (one slice per dim) of one tensor, reading only that box: safetensors
        through `get_slice`, a memory-mapped `.bin` through a view of its pages."""
        if all(s.indices(n) == (0, n, 1) for s, n in zip(index, self.shapes[key])):
            return self.get(key)
        where = self._where[key]
        if isinstance(where, dict):
            return _torch_to_numpy(where[key][index])
        return where.get_slice(key)[index]

    def close(self) -> None:
        self._stack.close()
        self._where.clear()

    def __enter__(self) -> "StateReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _safe_open(f: Path):
    from safetensors import SafetensorError, safe_open
    try:
        return safe_open(f, framework="np")
    except SafetensorError as err:  # safetensors checks the header and the file size here
        raise CheckpointFileError(f"not a valid safetensors file: {f} ({err})") from err


def _torch_load(f: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{f} is a PyTorch checkpoint; reading it needs torch installed") from None
    try:
        # mmap: tensors are paged in when read, not all at once.
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, OSError, UnpicklingError, ... by what is damaged
        # torch's own message for a file that is not a zip archive is about mmap, or an errno.
        why = ("not a zip archive: truncated, damaged, or torch's pre-1.6 format, which mmap cannot read"
               if not zipfile.is_zipfile(f) else f"{type(err).__name__}: {err}")
        raise CheckpointFileError(f"not a valid PyTorch checkpoint: {f} ({why})") from err
    if not isinstance(state, dict):
        raise CheckpointFileError(f"not a valid PyTorch checkpoint: {f} (holds a {type(state).__name__}, not a "
                                  "state dict)")
    return state


def write_state_dict(state: Mapping[str, np.ndarray], directory: str | os.PathLike,
                     max_shard_bytes: int = 5 * 2**30) -> None:
    """Write safetensors the way `save_pretrained` does: one file, or shards plus an index."""
    from safetensors.numpy import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        # np.require, not np.ascontiguousarray: that one turns a 0-d tensor (CLIP's logit_scale) into 1-d.
        shards[-1][key] = np.require(state[key], requirements="C")
        size += nbytes
    total = sum(a.nbytes for a in state.values())
    if len(shards) == 1:
        save_file(shards[0], directory / SAFE_WEIGHTS, metadata={"format": "pt"})
        return
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in progress(list(zip(names, shards)), total, "saving"):
        save_file(shard, directory / name, metadata={"format": "pt"})
    index = {"metadata": {"total_size": total},
             "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
    (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
