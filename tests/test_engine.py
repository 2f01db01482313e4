"""The load engine (jimm_linen/checkpoint/engine.py): slice-wise reads into shardings on 8 fake
CPU devices and across two processes, one abstract init and one placement per parameter for
NNX, `check_finite`, `tower=`, and any format through a region reader."""

import itertools
import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from safetensors.numpy import load_file, save_file

import bridge
import jimm_linen
import jimm_nnx
from jimm_linen import checkpoint as ckpt
from jimm_nnx import reference as parity
from jimm_linen import partitioning as pt
from jimm_linen.checkpoint import engine
from jimm_linen.checkpoint.keys import ConvKernel, DropLeading, Flatten, Fused, LinearKernel, Transform
from tests.helpers import TINY, assert_close, assert_same_tree, processes


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vit")
    parity.build_vit_reference(TINY, directory, seed=0)
    return directory


def record_reads(monkeypatch=None) -> list[tuple[str, tuple[int, ...], tuple[tuple[int, int], ...]]]:
    """Every region the engine reads from HF files: (key, stored shape, ((start, stop) per dim))."""
    reads = []
    get_region = ckpt.StateReader.get_region

    def recording(self, key, index):
        shape = self.shapes[key]
        reads.append((key, shape, tuple(s.indices(n)[:2] for s, n in zip(index, shape))))
        return get_region(self, key, index)

    if monkeypatch is None:
        ckpt.StateReader.get_region = recording
    else:
        monkeypatch.setattr(ckpt.StateReader, "get_region", recording)
    return reads


def region_size(region) -> int:
    return int(np.prod([stop - start for start, stop in region]))


def mesh_of(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


# --- transforms ---------------------------------------------------------------------------------

# (transform, Linen shape, the dims a cut of which reads exactly the box: the dims meshes shard,
# embed / heads / mlp, and the leading dim of each group a reshape splits; e.g. kv is not)
TRANSFORMS = [
    (Transform(), (4, 6), {0, 1}), (Flatten(), (4, 8), {0}), (LinearKernel(1), (6, 4, 8), {0, 1}),
    (LinearKernel(2), (4, 8, 6), {0, 2}), (ConvKernel(), (2, 2, 3, 8), {0, 1, 2, 3}),
    (DropLeading(1), (1, 5, 6), {1, 2}), (DropLeading(1), (1,), set()),
    (Fused(LinearKernel(1), 1, 3), (6, 4, 8), {0, 1}), (Fused(Flatten(), 2, 3), (4, 8), {0}), (Transform(), (), set()),
]


@pytest.mark.parametrize("transform,shape,exact", TRANSFORMS, ids=[f"{type(t).__name__}{s}" for t, s, _ in TRANSFORMS])
def test_a_box_reads_only_the_hf_region_that_covers_it(transform, shape, exact):
    hf = np.random.default_rng(0).standard_normal(transform.hf_shape(shape)).astype(np.float32)
    whole = transform.to_linen(hf, shape)
    # Every box that halves or keeps each dim: what a mesh cuts.
    halves = [[slice(0, n)] + ([slice(0, n // 2), slice(n // 2, n)] if n % 2 == 0 else []) for n in shape]
    for index in itertools.product(*halves):
        reads = []
        got = transform.read_region(lambda r: reads.append(r) or hf[r], shape, index)
        np.testing.assert_array_equal(got, whole[index])
        assert len(reads) == 1
        cut = {d for d, s in enumerate(index) if s.stop - s.start < shape[d]}
        if cut <= exact:
            assert region_size(tuple((s.start, s.stop) for s in reads[0])) == whole[index].size, (index, reads)


# --- sharded loads, one process -----------------------------------------------------------------

@pytest.mark.parametrize("mesh_shape,names,rules,query_boxes", [
    ((4, 2), ("fsdp", "tensor"), "fsdp_tp", 8),  # query kernel: embed / 4, heads / 2
    ((2, 4), ("data", "fsdp"), (("layers", "data"), ("embed", "fsdp")), 4),  # a device holds one layer of two
], ids=["fsdp_tp", "layers_sharded"])
def test_sharded_load_reads_slices_never_whole_tensors(vit_dir, monkeypatch, mesh_shape, names, rules, query_boxes):
    _, plain = jimm_linen.from_pretrained(vit_dir)
    reads = record_reads(monkeypatch)
    _, sharded = jimm_linen.from_pretrained(vit_dir, mesh=mesh_of(mesh_shape, names), rules=rules)
    assert_same_tree(jax.tree.map(np.asarray, sharded), plain)

    full = {key: shape for key, shape, _ in reads}
    by_key: dict[str, list] = {}
    for key, _, region in reads:
        by_key.setdefault(key, []).append(region)
    state = load_file(vit_dir / "model.safetensors")
    assert set(by_key) == set(state)
    for key, regions in by_key.items():
        # Each stored element is read once: boxes of one tensor never overlap or repeat, and a
        # layer is read only for the devices that hold it.
        assert sum(map(region_size, regions)) == state[key].size, key
        if len(regions) > 1:
            assert all(region_size(r) < state[key].size for r in regions), f"{key} read whole"
    query = "vit.encoder.layer.0.attention.attention.query.weight"
    assert len(by_key[query]) == query_boxes and full[query] == (32, 32)


def test_check_finite_names_the_keys_holding_nan_or_inf(vit_dir, tmp_path):
    bad = "vit.encoder.layer.1.intermediate.dense.weight"
    (tmp_path / "config.json").write_text((vit_dir / "config.json").read_text())
    state = load_file(vit_dir / "model.safetensors")
    state[bad][7, 30] = np.nan
    state["vit.layernorm.bias"][3] = np.inf
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    _, variables = jimm_linen.from_pretrained(tmp_path)  # the default loads what is there
    kernel = variables["params"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert np.isnan(np.asarray(kernel)).any()
    for mesh in (None, mesh_of((8,), ("fsdp",))):  # sharded: the host that reads the slice sees it
        with pytest.raises(ckpt.CheckpointError, match="NaN or inf") as err:
            jimm_linen.from_pretrained(tmp_path, check_finite=True, mesh=mesh)
        message = str(err.value)
        assert bad in message and "vit.layernorm.bias" in message, message
        assert "vit.encoder.layer.0.intermediate.dense.weight" not in message
    jimm_linen.from_pretrained(vit_dir, check_finite=True)


def test_boxed_variables_carry_the_logical_names(vit_dir):
    model, plain = jimm_linen.from_pretrained(vit_dir)
    _, boxed = jimm_linen.from_pretrained(vit_dir, boxed=True)
    assert_same_tree(nn.unbox(boxed), plain)
    names = jax.tree.map(lambda b: tuple(b.names), boxed["params"],
                         is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert names == pt.logical_axes(model, *model.config.dummy_inputs())


# --- NNX: one abstract init, one placement ------------------------------------------------------

@pytest.mark.parametrize("sharded", [True, False], ids=["mesh8", "unsharded"])
def test_nnx_from_pretrained_inits_once_and_places_each_parameter_once(vit_dir, monkeypatch, sharded):
    from flax import nnx

    counts = {"init": 0, "eval_shape": 0, "placements": 0}
    depth = dict.fromkeys(counts, 0)

    def counting(name, fn):  # calls from the outside only (flax's setup check nests an eval_shape)
        def wrapper(*args, **kwargs):
            counts[name] += depth[name] == 0
            depth[name] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[name] -= 1
        return wrapper

    monkeypatch.setattr(nn.Module, "init", counting("init", nn.Module.init))
    monkeypatch.setattr(jax, "eval_shape", counting("eval_shape", jax.eval_shape))
    monkeypatch.setattr(jax, "device_put", counting("placements", jax.device_put))
    monkeypatch.setattr(jax, "make_array_from_callback", counting("placements", jax.make_array_from_callback))
    sharding = jimm_nnx.Sharding("fsdp", mesh_of((8,), ("fsdp",))) if sharded else jimm_nnx.NoSharding()
    model = jimm_nnx.VisionTransformer.from_pretrained(vit_dir, sharding=sharding)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert counts == {"init": 1, "eval_shape": 1, "placements": len(params)}, counts

    monkeypatch.undo()
    _, want = jimm_linen.from_pretrained(vit_dir)
    assert_same_tree(jax.tree.map(np.asarray, bridge.to_linen_variables(model)), want)
    if sharded:
        kernel = model.Transformer["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].get_value()
        assert kernel.sharding == model.placement.leaf_sharding(("layers", "embed", "mlp"), kernel.shape)
        assert not kernel.sharding.is_fully_replicated


# --- towers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_tower_equals_split_tower_and_reads_only_its_keys(family, tmp_path, monkeypatch):
    cfg = next(iter(parity.DEFAULTS[family].values()))
    parity.build_reference(family, cfg, tmp_path, seed=2)
    full_model, full = jimm_linen.from_pretrained(tmp_path)
    reads = record_reads(monkeypatch)
    for tower, own, other in (("vision", "vision_model.", "text_model."), ("text", "text_model.", "vision_model.")):
        del reads[:]
        model, variables = jimm_linen.from_pretrained(tmp_path, tower=tower)
        want_model, want = jimm_linen.models.image_text.split_tower(full_model, full, tower)
        assert model == want_model
        assert_same_tree(variables, want)
        keys = {key for key, _, _ in reads}
        assert keys and not any(k.startswith(other) or k.startswith("logit_") for k in keys), sorted(keys)
        assert any(k.startswith(own) for k in keys)
        if family == "clip":  # the projection comes with its tower, like CLIP*ModelWithProjection
            assert f"{'visual' if tower == 'vision' else 'text'}_projection.weight" in keys

    # A single-tower checkpoint of that tower loads as is; the other tower it does not have.
    out = tmp_path / "vision_only"
    model, variables = jimm_linen.from_pretrained(tmp_path, tower="vision")
    jimm_linen.save_pretrained(model, variables, out)
    again_model, again = jimm_linen.from_pretrained(out, tower="vision")
    assert again_model == model
    assert_same_tree(again, variables)
    with pytest.raises(ValueError, match="has no text tower"):
        jimm_linen.from_pretrained(out, tower="text")
    with pytest.raises(ValueError, match="tower must be 'vision' or 'text'"):
        jimm_linen.from_pretrained(tmp_path, tower="audio")


# --- any format through a region reader ---------------------------------------------------------

class DictReader:
    """A file format the engine does not know: arrays in a dict, layers stored stacked."""

    def __init__(self, arrays):
        self.arrays, self.reads = arrays, []

    def dtype(self, key):
        return self.arrays[key].dtype

    def get_region(self, key, index):
        self.reads.append(key)
        return self.arrays[key][index]


def test_stacked_files_and_other_formats_load_through_a_region_reader():
    model = jimm_linen.ViT(jimm_linen.ViTConfig(**TINY))
    target = engine.Target.of(model, *model.config.dummy_inputs())
    rng = np.random.default_rng(1)
    stored = {path: rng.standard_normal(leaf.value.shape).astype(np.float32) for path, leaf in target.leaves.items()}
    reader = DictReader({f"file/{p}": v for p, v in stored.items()})
    # Scanned leaves name their own (stacked) path; the head is left to its initialiser.
    plan = {p: ckpt.Source(f"file/{p}", ckpt.IDENTITY) for p in stored if not p.startswith("head/")}
    variables = engine.load(target, reader, plan, sharding=pt.leaf_sharding(mesh_of((2, 4), ("data", "fsdp"))))
    flat = ckpt.flatten_tree(variables["params"])
    for path, value in stored.items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(np.asarray(flat[path]), value, err_msg=path)
    fresh = engine.fresh_values(model, model.config.dummy_inputs(), ["head/kernel"])
    np.testing.assert_array_equal(np.asarray(flat["head/kernel"]), fresh["head/kernel"])
    assert not any(k.startswith("file/head/") for k in reader.reads)


# --- two processes, one mesh --------------------------------------------------------------------

def _images():
    return np.random.default_rng(5).standard_normal((8, 16, 16, 3)).astype(np.float32)


def _multihost_worker(process_id: int, port: int, directory: str, out: str) -> None:
    """One of two processes: load onto an 8-device mesh spanning both, run, gather the logits."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    from jax.experimental import multihost_utils

    reads = record_reads()
    mesh = mesh_of((8,), ("fsdp",))
    model, variables = jimm_linen.from_pretrained(directory, mesh=mesh, rules="fsdp")
    images = _images()
    x = jax.make_array_from_callback(images.shape, pt.data_sharding(images.shape, mesh, "fsdp"), lambda i: images[i])
    with pt.activation_sharding(mesh, "fsdp"):
        logits = jax.jit(model.apply)(variables, x)
    np.save(Path(out) / f"logits{process_id}.npy", multihost_utils.process_allgather(logits, tiled=True))
    (Path(out) / f"reads{process_id}.json").write_text(json.dumps(reads))
    jax.distributed.shutdown()


def test_two_processes_load_their_own_slices_and_match_one_process(vit_dir, tmp_path):
    with processes(Path(__file__), [vit_dir, tmp_path]):
        model, variables = jimm_linen.from_pretrained(vit_dir)
        want = np.asarray(model.apply(variables, _images()))
    for i in (0, 1):
        assert_close(np.load(tmp_path / f"logits{i}.npy"), want, what=f"process {i} logits")

    state = load_file(vit_dir / "model.safetensors")
    mine = [{} for _ in (0, 1)]
    for i in (0, 1):
        for key, _, region in json.loads((tmp_path / f"reads{i}.json").read_text()):
            mine[i].setdefault(key, []).append(tuple(map(tuple, region)))
    total = sum(a.size for a in state.values())
    for i in (0, 1):
        read = sum(region_size(r) for regions in mine[i].values() for r in regions)
        assert read < 0.6 * total, f"process {i} read {read} of {total} elements"
    query = "vit.encoder.layer.1.attention.attention.query.weight"
    for key in state:
        split = set(mine[0][key]) != set(mine[1][key])
        if split:  # a sharded tensor: each half read by the process that holds it, once
            assert not set(mine[0][key]) & set(mine[1][key]), key
            assert sum(region_size(r) for i in (0, 1) for r in mine[i][key]) == state[key].size, key
        else:  # replicated: each host holds it whole
            assert mine[0][key] == [tuple((0, n) for n in state[key].shape)], key
    assert set(mine[0][query]) != set(mine[1][query])


if __name__ == "__main__":
    _multihost_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
