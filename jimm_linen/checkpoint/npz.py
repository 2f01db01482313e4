"""big_vision `.npz` checkpoint files: reading them lazily, and the file-side differences from
jimm's parameter tree (`jimm_linen.big_vision` maps configs and runs the load).

A big_vision checkpoint is an `np.savez` of the flattened parameter tree:

- keys are '/'-joined paths, optionally under `params/` (or `opt/target/`, old Flax optimizer
  checkpoints; other top-level trees such as optimizer state are ignored, as big_vision's
  `utils.load_params` does), bf16 stored by numpy as `V2` is read back as bf16;
  `subtree="img"` (or `"file.npz:img"`) reads one part, e.g. a two-towers image tower as a ViT.
- the encoder layout: a file holds `encoderblock` (scanned, leading layers axis) or
  `encoderblock_{i}` (loop) per encoder, whatever `scan` asks for; `unscan` gives the loop layout.
- old checkpoints (what big_vision's `vit.fix_old_checkpoints` and
  `text_transformer.load` repair, here `repair_old`): pre-Linen module numbering
  (`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3` in one block),
  `Transformer/posembed_input/pos_embedding` and `Transformer/pos_embedding` (moved to
  `pos_embedding`), a MAP head inlined at the top level (`probe`, ...), and a text
  `Encoder_0/pos_embedding` (added to `txt/pos_embedding`).

The file is read as a table of `Entry`s (shape, dtype, a reader), so that repairs and the layout
change are renames and views, and each array is read once, when it is loaded. A file that is not
a readable `.npz` raises `CheckpointFileError` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jimm_linen.checkpoint.keys import CheckpointError, CheckpointFileError

__all__ = ["Entry", "NpzReader", "file_entries", "repair_old", "split_path", "unscan"]

# --- the file -------------------------------------------------------------------------------

# What zipfile and numpy raise on a damaged archive or array: a bad CRC or local header, bad
# compressed data, a malformed or truncated .npy header or payload.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _recover_dtype(dtype: np.dtype) -> np.dtype:
    """numpy saves bfloat16 as 2-byte void; read it back as bfloat16."""
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return dtype


class NpzReader:
    """A lazy `.npz`: `shapes` and `dtypes` from the array headers, without reading data;
    `get(key)` reads one array. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not zipfile.is_zipfile(self.path):
            raise CheckpointFileError(f"not a valid .npz file: {self.path} (not a zip archive: truncated, or not "
                                      "an .npz)")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._zip = None
        try:
            self._zip = zipfile.ZipFile(self.path)
            for info in self._zip.infolist():
                if info.filename.endswith(".npy"):
                    self._read_header(info)
        except _DAMAGED as err:
            self.close()
            raise CheckpointFileError(f"not a valid .npz file: {self.path} ({err})") from err
        if not self._members:
            self.close()
            raise CheckpointFileError(f"not a valid .npz file: {self.path} (a zip archive without .npy arrays)")
        self.total_bytes = sum(i.file_size for i in self._members.values())

    def _read_header(self, info: zipfile.ZipInfo) -> None:
        key = info.filename[:-len(".npy")]
        with self._zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version in _HEADER_READERS:
                shape, _, dtype = _HEADER_READERS[version](f)
            else:  # a header version without a public reader: read the array once
                f.seek(0)
                arr = np.lib.format.read_array(f, allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
        self.shapes[key] = tuple(int(d) for d in shape)
        self.dtypes[key] = _recover_dtype(np.dtype(dtype))
        self._members[key] = info

    def get(self, key: str) -> np.ndarray:
        try:
            with self._zip.open(self._members[key]) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except _DAMAGED as err:
            raise CheckpointFileError(f"damaged .npz file: {self.path}: cannot read {key}.npy ({err})") from err
        dtype = _recover_dtype(arr.dtype)
        return arr.view(dtype) if dtype != arr.dtype else arr

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor as the model will see it: shape, dtype, how to read it, and (for one layer
    of a scanned tensor) how to read the whole stacked tensor and which layer this is."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]
    layer_of: tuple[Callable[[], np.ndarray], int] | None = None

    @classmethod
    def constant(cls, value: np.ndarray) -> "Entry":
        """A tensor the file does not hold, e.g. one computed from the config."""
        return cls(value.shape, value.dtype, lambda: value)


class _OneSlotCache:
    """Keeps the last array read: the layers of a scanned tensor are read one after another."""

    def __init__(self, reader: NpzReader):
        self._reader, self._key, self._value = reader, None, None

    def __call__(self, key: str) -> np.ndarray:
        if key != self._key:
            self._key, self._value = None, None  # drop the old array before reading the next
            self._value, self._key = self._reader.get(key), key
        return self._value


def split_path(path, subtree: str | None) -> tuple[Path, str | None]:
    """big_vision's `file.npz:img/...` names a part of a checkpoint."""
    p = Path(path)
    if not p.exists():
        m = re.fullmatch(r"(.*\.npz):([\w/]+)", str(path))
        if m:
            if subtree is not None:
                raise ValueError(f"{path} names a part of the checkpoint and subtree={subtree!r} names another")
            return Path(m.group(1)), m.group(2)
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    return p, subtree


def file_entries(reader: NpzReader, subtree: str | None = None) -> dict[str, Entry]:
    """The file's tensors under the model's names: without the `params/` (or `opt/target/`)
    prefix, only those under `subtree`; read lazily, one array at a time."""
    cache = _OneSlotCache(reader)
    keys = list(reader.shapes)
    for prefix in ("params/", "opt/target/"):  # as big_vision's load_params: params, then opt/target
        if any(k.startswith(prefix) for k in keys):
            keys = [k for k in keys if k.startswith(prefix)]
            strip = prefix
            break
    else:
        strip = ""
    if subtree:
        sub = strip + subtree.strip("/") + "/"
        picked = [k for k in keys if k.startswith(sub)]
        if not picked:
            raise CheckpointError(f"no keys under {sub!r} in {reader.path}")
        keys, strip = picked, sub
    return {k[len(strip):]: Entry(reader.shapes[k], reader.dtypes[k], functools.partial(cache, k)) for k in keys}


# --- old checkpoints ------------------------------------------------------------------------

_NUMBERED = re.compile(r"(.+)_(\d+)")


def _renumber_pre_linen(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Pre-Linen Flax numbered a scope's submodules with one counter (`LayerNorm_0`,
    `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), Linen with one per class. A
    scope renumbers only when it has exactly that signature: numbers 0..n-1 across classes and
    not 0..k-1 within each class. `encoderblock_{i}` are layer indices, never renumbered."""
    scopes: dict[str, set[str]] = {}
    for key in entries:
        parts = key.split("/")
        for depth in range(len(parts) - 1):
            scopes.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    renames: dict[tuple[str, str], str] = {}
    for scope, names in scopes.items():
        numbered = {n: m for n in names if (m := _NUMBERED.fullmatch(n)) and not n.startswith("encoderblock_")}
        per_class: dict[str, list[int]] = {}
        for m in numbered.values():
            per_class.setdefault(m.group(1), []).append(int(m.group(2)))
        linen = all(sorted(v) == list(range(len(v))) for v in per_class.values())
        one_counter = sorted(int(m.group(2)) for m in numbered.values()) == list(range(len(numbered)))
        if linen or not one_counter:
            continue
        counts: dict[str, int] = {}
        for n in sorted(numbered, key=lambda n: int(numbered[n].group(2))):
            cls = numbered[n].group(1)
            renames[(scope, n)] = f"{cls}_{counts.get(cls, 0)}"
            counts[cls] = counts.get(cls, 0) + 1
    if not renames:
        return entries
    out = {}
    for key, e in entries.items():
        parts = key.split("/")
        new = [renames.get(("/".join(parts[:d]), p), p) if d < len(parts) - 1 else p for d, p in enumerate(parts)]
        out["/".join(new)] = e
    return out


def _move(entries: dict[str, Entry], old: str, new: str, problems: list[str]) -> None:
    if old in entries:
        if new in entries:
            problems.append(f"both {old} and {new} hold the position embeddings")
        else:
            entries[new] = entries.pop(old)


def repair_old(entries: dict[str, Entry], vit_prefix: str, text: bool) -> dict[str, Entry]:
    """Old big_vision layouts as today's: the ViT under `vit_prefix` ("img/" in a two-towers
    file), and with `text` the text tower's extra position embedding."""
    entries = _renumber_pre_linen(entries)
    problems: list[str] = []
    p = vit_prefix
    _move(entries, f"{p}Transformer/posembed_input/pos_embedding", f"{p}pos_embedding", problems)
    _move(entries, f"{p}Transformer/pos_embedding", f"{p}pos_embedding", problems)
    if f"{p}probe" in entries and not any(k.startswith(f"{p}MAPHead_0/") for k in entries):
        # A MAP head inlined at the top level (ViT-G development checkpoints).
        for part in ("probe", "MlpBlock_0/", "MultiHeadDotProductAttention_0/", "LayerNorm_0/"):
            for k in [k for k in entries if k == p + part or (part.endswith("/") and k.startswith(p + part))]:
                entries[f"{p}MAPHead_0/{k[len(p):]}"] = entries.pop(k)
    extra = "txt/Encoder_0/pos_embedding"
    if text and extra in entries:
        # Some older text towers added a second position embedding; big_vision sums them.
        main = entries.get("txt/pos_embedding")
        e = entries.pop(extra)
        if main is None or main.shape != e.shape:
            problems.append(f"{extra} {e.shape} cannot be added to txt/pos_embedding "
                            f"{main.shape if main else '(missing)'}")
        else:
            entries["txt/pos_embedding"] = Entry(main.shape, main.dtype, lambda a=main.read, b=e.read: a() + b())
    if problems:
        raise CheckpointError("checkpoint does not match the model; " + "; ".join(problems))
    return entries


# --- layout -------------------------------------------------------------------------------

_SCANNED = re.compile(r"((?:.*/)?)encoderblock/(.+)")


def unscan(entries: dict[str, Entry], encoders: dict[str, int]) -> dict[str, Entry]:
    """Scanned `encoderblock/...` tensors of the model's encoders (`{prefix: layers}`, e.g.
    `{"Transformer/": 12}`) as per-layer entries."""
    out, problems = {}, []
    for key, e in entries.items():
        m = _SCANNED.fullmatch(key)
        if not m or m.group(1) not in encoders:
            out[key] = e
            continue
        n = encoders[m.group(1)]
        if not e.shape or e.shape[0] != n:
            problems.append(f"{key}: checkpoint {e.shape} is scanned over {e.shape[0] if e.shape else 0} layers "
                            f"(leading axis), the model has {n}")
            continue
        for i in range(n):
            out[f"{m.group(1)}encoderblock_{i}/{m.group(2)}"] = Entry(
                e.shape[1:], e.dtype, lambda read=e.read, i=i: read()[i], layer_of=(e.read, i))
    if problems:
        raise CheckpointError("checkpoint does not match the model; mis-shaped keys: " + "; ".join(problems))
    return out

