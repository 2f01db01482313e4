"""A damaged checkpoint file raises `CheckpointFileError` naming the file, whatever reader found
the damage (safetensors, torch, json, zipfile, numpy), with that reader's error chained."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jimm_linen
from jimm_linen import big_vision
from jimm_nnx import reference as parity
from jimm_linen.checkpoint import CheckpointError, CheckpointFileError, flatten_tree
from jimm_linen.models.vit import ViT
from tests.helpers import TINY

VIT_BV = dict(width=32, depth=2, mlp_dim=48, num_heads=4, patch_size=4, pool_type="tok", num_classes=5)


def raises_naming(path, match: str, load, *, chained: bool = True):
    """`load()` raises CheckpointFileError whose message names `path` and says `match`."""
    with pytest.raises(CheckpointFileError) as err:
        load()
    message = str(err.value)
    assert str(path) in message, message
    assert match in message, message
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, ValueError)
    assert (err.value.__cause__ is not None) == chained
    return message


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garbage(path, size: int = 4096):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())


# --- HF checkpoint directories ----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vit")
    parity.build_vit_reference(TINY, directory, seed=0)
    return directory


@pytest.fixture
def copy(hf_dir, tmp_path):
    """A fresh copy of the good checkpoint to damage."""
    return shutil.copytree(hf_dir, tmp_path / "ckpt")


@pytest.mark.parametrize("damage", [truncate, garbage, lambda p: p.write_bytes(b"")],
                         ids=["truncated", "garbage", "empty"])
def test_damaged_safetensors(copy, damage):
    damage(copy / "model.safetensors")
    raises_naming(copy / "model.safetensors", "not a valid safetensors file", lambda: jimm_linen.from_pretrained(copy))


@pytest.mark.parametrize("damage", [truncate, garbage], ids=["truncated", "garbage"])
def test_damaged_pytorch_bin(hf_dir, tmp_path, damage):
    shutil.copy(hf_dir / "config.json", tmp_path)
    torch.save({k: torch.from_numpy(v) for k, v in load_file(hf_dir / "model.safetensors").items()},
               tmp_path / "pytorch_model.bin")
    damage(tmp_path / "pytorch_model.bin")
    message = raises_naming(tmp_path / "pytorch_model.bin", "not a valid PyTorch checkpoint: ",
                            lambda: jimm_linen.from_pretrained(tmp_path))
    assert "not a zip archive" in message


def test_invalid_config_json(copy):
    text = (copy / "config.json").read_text()
    (copy / "config.json").write_text(text[: len(text) // 2])
    raises_naming(copy / "config.json", "invalid JSON in", lambda: jimm_linen.from_pretrained(copy))
    garbage(copy / "config.json")
    raises_naming(copy / "config.json", "invalid JSON in", lambda: jimm_linen.from_pretrained(copy))
    (copy / "config.json").write_text("[1, 2]")
    raises_naming(copy / "config.json", "expected an object, got list", lambda: jimm_linen.from_pretrained(copy),
                  chained=False)


def _sharded(hf_dir, directory):
    """The checkpoint in two shards and an index."""
    shutil.copy(hf_dir / "config.json", directory)
    state = load_file(hf_dir / "model.safetensors")
    keys = sorted(state)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    for name, half in zip(names, halves):
        save_file({k: state[k] for k in half}, directory / name, metadata={"format": "pt"})
    weight_map = {k: name for name, half in zip(names, halves) for k in half}
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index, [directory / n for n in names]


def test_invalid_index_json(hf_dir, tmp_path):
    index, _ = _sharded(hf_dir, tmp_path)
    jimm_linen.from_pretrained(tmp_path)  # the good one loads
    index.write_text(index.read_text()[:-10])
    message = raises_naming(index, "invalid JSON in", lambda: jimm_linen.from_pretrained(tmp_path))
    assert "line " in message
    index.write_text(json.dumps({"metadata": {}}))
    raises_naming(index, "no weight_map", lambda: jimm_linen.from_pretrained(tmp_path), chained=False)


def test_index_names_a_missing_shard(hf_dir, tmp_path):
    index, shards = _sharded(hf_dir, tmp_path)
    os.remove(shards[1])
    message = raises_naming(index, "missing shard", lambda: jimm_linen.from_pretrained(tmp_path), chained=False)
    assert str(shards[1]) in message and str(shards[0]) not in message


# --- big_vision .npz --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    """A good big_vision ViT file (jimm's loop-layout names are big_vision's), under `params/`."""
    module = ViT(big_vision.vit_config(VIT_BV, image_size=16), scan=False)
    params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
    path = tmp_path_factory.mktemp("bv") / "vit.npz"
    np.savez(path, **{f"params/{k}": np.asarray(v) for k, v in flatten_tree(params).items()})
    return path


@pytest.fixture
def npz_copy(npz_file, tmp_path):
    return shutil.copy(npz_file, tmp_path / "vit.npz")


@pytest.mark.parametrize("damage", [truncate, garbage], ids=["truncated", "garbage"])
def test_damaged_npz(npz_copy, damage):
    big_vision.load_npz(npz_copy, VIT_BV, scan=False)  # the good one loads
    damage(npz_copy)
    raises_naming(npz_copy, "not a valid .npz file", lambda: big_vision.load_npz(npz_copy, VIT_BV), chained=False)


def _overwrite(path, at: int, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_npz_with_a_damaged_array_header(npz_copy):
    # np.savez stores arrays uncompressed: the first .npy magic string is in the file as is (the
    # zip's CRC check, reading the small array whole, finds the damage before numpy does).
    _overwrite(npz_copy, npz_copy.read_bytes().index(b"\x93NUMPY"), b"garbage!")
    raises_naming(npz_copy, "not a valid .npz file", lambda: big_vision.load_npz(npz_copy, VIT_BV))


def test_npz_with_damaged_array_data(npz_copy):
    # Flip bytes inside the biggest array's payload: the zip CRC check fails when it is read.
    raw = npz_copy.read_bytes()
    biggest = "params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel.npy"
    start = raw.index(b"\x93NUMPY", raw.index(biggest.encode()))
    _overwrite(npz_copy, start + 512, b"\xff" * 16)
    message = raises_naming(npz_copy, "damaged .npz file", lambda: big_vision.load_npz(npz_copy, VIT_BV))
    assert biggest in message


def test_zip_without_arrays_is_not_an_npz(tmp_path):
    import zipfile
    path = tmp_path / "not.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", b"hello")
    raises_naming(path, "without .npy arrays", lambda: big_vision.load_npz(path, VIT_BV), chained=False)
