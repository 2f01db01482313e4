"""HF checkpoints in and out: strict loading, formats, round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jimm_linen
from jimm_nnx import reference as parity
from jimm_linen.checkpoint import CheckpointError
from tests.helpers import TINY, max_rel_diff, nhwc


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vit")
    model = parity.build_vit_reference(TINY, directory, seed=0)
    return model, directory


def _logits(model, pixels):
    with torch.no_grad():
        return model(torch.from_numpy(pixels)).logits.numpy()


def _edit_checkpoint(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_round_trip_through_transformers(hf_dir, tmp_path):
    from transformers import ViTForImageClassification

    ref_model, directory = hf_dir
    pixels = parity.random_images(2, 16, 3)
    model, variables = jimm_linen.from_pretrained(directory)
    ours = np.asarray(model.apply(variables, jnp.asarray(nhwc(pixels))))
    jimm_linen.save_pretrained(model, variables, tmp_path / "out")
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert max_rel_diff(_logits(reloaded, pixels), ours) <= 1e-6
    # Every tensor comes back bit for bit.
    original = load_file(directory / "model.safetensors")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(original) == sorted(saved)
    for k in original:
        np.testing.assert_array_equal(original[k], saved[k], err_msg=k)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["ViTForImageClassification"]


def test_scan_and_loop_layouts_save_the_same_files(hf_dir, tmp_path):
    _, directory = hf_dir
    for scan in (True, False):
        model, variables = jimm_linen.from_pretrained(directory, scan=scan)
        jimm_linen.save_pretrained(model, variables, tmp_path / str(scan))
    a, b = load_file(tmp_path / "True" / "model.safetensors"), load_file(tmp_path / "False" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_sharded_safetensors_both_ways(hf_dir, tmp_path):
    from transformers import ViTForImageClassification

    ref_model, directory = hf_dir
    model, variables = jimm_linen.from_pretrained(directory)
    jimm_linen.save_pretrained(model, variables, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    pixels = parity.random_images(2, 16, 3)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "sharded").eval()
    assert max_rel_diff(_logits(reloaded, pixels), _logits(ref_model, pixels)) <= 1e-6
    model2, variables2 = jimm_linen.from_pretrained(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, variables2, variables)


def test_pytorch_bin_checkpoint(hf_dir, tmp_path):
    ref_model, _ = hf_dir
    # transformers 5 only writes safetensors; older releases wrote this `torch.save` file.
    ref_model.config.save_pretrained(tmp_path)
    torch.save(ref_model.state_dict(), tmp_path / "pytorch_model.bin")
    model, variables = jimm_linen.from_pretrained(tmp_path)
    pixels = parity.random_images(2, 16, 3)
    assert max_rel_diff(model.apply(variables, jnp.asarray(nhwc(pixels))), _logits(ref_model, pixels)) <= 1e-5


def test_bf16_checkpoint_stays_bf16(hf_dir, tmp_path):
    ref_model, _ = hf_dir
    ref_model.to(torch.bfloat16).save_pretrained(tmp_path)
    ref_model.to(torch.float32)
    model, variables = jimm_linen.from_pretrained(tmp_path)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    _, as_f32 = jimm_linen.from_pretrained(tmp_path, param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}


def test_missing_key_is_named(hf_dir, tmp_path):
    _, directory = hf_dir
    key = "vit.encoder.layer.1.attention.attention.value.weight"
    bad = _edit_checkpoint(directory, tmp_path / "bad", lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=r"missing keys: .*" + key.replace(".", r"\.")):
        jimm_linen.from_pretrained(bad)


def test_unexpected_key_is_named(hf_dir, tmp_path):
    _, directory = hf_dir
    bad = _edit_checkpoint(directory, tmp_path / "bad",
                           lambda s: s.__setitem__("vit.encoder.layer.7.output.dense.bias", np.zeros(32, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*vit\.encoder\.layer\.7\.output\.dense\.bias"):
        jimm_linen.from_pretrained(bad)


def test_misshaped_key_is_named(hf_dir, tmp_path):
    _, directory = hf_dir
    key = "vit.encoder.layer.0.intermediate.dense.weight"
    bad = _edit_checkpoint(directory, tmp_path / "bad", lambda s: s.__setitem__(key, s[key][:, :16]))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: .*intermediate\.dense\.weight: checkpoint \(48, 16\), model expects \(48, 32\)"):
        jimm_linen.from_pretrained(bad)


def test_dont_load_head_for_fine_tuning(hf_dir):
    _, directory = hf_dir
    with pytest.raises(CheckpointError, match="classifier.weight"):
        jimm_linen.from_pretrained(directory, num_labels=7)
    model, variables = jimm_linen.from_pretrained(directory, num_labels=7, dont_load=["head/.*"],
                                                  rng=jax.random.key(1))
    _, original = jimm_linen.from_pretrained(directory)
    assert variables["params"]["head"]["kernel"].shape == (32, 7)
    np.testing.assert_array_equal(variables["params"]["embedding"]["kernel"],
                                  original["params"]["embedding"]["kernel"])
    assert model.apply(variables, jnp.zeros((1, 16, 16, 3))).shape == (1, 7)


def test_unknown_model_type_and_config_field(hf_dir, tmp_path):
    _, directory = hf_dir
    cfg = json.loads((directory / "config.json").read_text())
    for name, edit, message in [
        ("type", {"model_type": "swin"}, "unknown model_type 'swin'"),
        ("field", {"rope_theta": 10000.0}, r"unknown config field\(s\) for model_type 'vit': \['rope_theta'\]"),
    ]:
        bad = tmp_path / name
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**cfg, **edit}))
        (bad / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
        with pytest.raises(ValueError, match=message):
            jimm_linen.from_pretrained(bad)


def test_missing_weights_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        jimm_linen.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        jimm_linen.from_pretrained(tmp_path)


def test_hub_id_resolves_through_the_offline_cache(hf_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    _, directory = hf_dir
    repo = tmp_path / "hub" / "models--acme--tiny-vit"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((directory / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model, variables = jimm_linen.from_pretrained("acme/tiny-vit")
    _, local = jimm_linen.from_pretrained(directory)
    jax.tree.map(np.testing.assert_array_equal, variables, local)


def test_vit_model_with_pooler(tmp_path):
    """HF ViTModel (no classifier, with pooler): pooled output = tanh(dense(CLS))."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ref = ViTModel(ViTConfig(**{k: v for k, v in TINY.items() if k != "num_labels"}, pooler_output_size=24)).eval()
    parity.perturb_(ref, 1)
    ref.save_pretrained(tmp_path)
    pixels = parity.random_images(2, 16, 3)
    with torch.no_grad():
        expected = ref(torch.from_numpy(pixels)).pooler_output.numpy()
    model, variables = jimm_linen.from_pretrained(tmp_path)
    assert max_rel_diff(model.apply(variables, jnp.asarray(nhwc(pixels))), expected) <= 1e-5
    jimm_linen.save_pretrained(model, variables, tmp_path / "out")
    again = ViTModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert max_rel_diff(again(torch.from_numpy(pixels)).pooler_output.numpy(), expected) <= 1e-6


def test_transformers_v5_module_names_load_too(hf_dir, tmp_path):
    """A state dict taken from a live transformers-5 model uses renamed modules."""
    ref_model, _ = hf_dir
    ref_model.config.save_pretrained(tmp_path)
    state = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    assert any(".layers.0.attention.q_proj." in k for k in state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, variables = jimm_linen.from_pretrained(tmp_path)
    pixels = parity.random_images(2, 16, 3)
    assert max_rel_diff(model.apply(variables, jnp.asarray(nhwc(pixels))), _logits(ref_model, pixels)) <= 1e-5
    # Both spellings of one tensor in one checkpoint is ambiguous: an error, not a silent pick.
    both = load_file(tmp_path / "model.safetensors")
    both["vit.encoder.layer.0.attention.attention.query.weight"] = both["vit.layers.0.attention.q_proj.weight"]
    save_file(both, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="keys naming the same parameter"):
        jimm_linen.from_pretrained(tmp_path)


def test_progress_bar_only_on_a_terminal_for_large_checkpoints(monkeypatch):
    import sys

    from tqdm.auto import tqdm

    from jimm_linen import checkpoint

    items = list(range(3))
    assert checkpoint.progress(items, 10 * checkpoint.PROGRESS_MIN_BYTES, "x") is items  # not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert checkpoint.progress(items, checkpoint.PROGRESS_MIN_BYTES - 1, "x") is items  # small
    bar = checkpoint.progress(items, checkpoint.PROGRESS_MIN_BYTES, "x")
    assert isinstance(bar, tqdm) and list(bar) == items


def test_dont_load_typo_is_an_error(hf_dir):
    _, directory = hf_dir
    with pytest.raises(CheckpointError, match=r"dont_load pattern\(s\) \['heads/\.\*'\] match no model parameter"):
        jimm_linen.from_pretrained(directory, dont_load=["heads/.*"])


def test_backbone_and_classifier_checkpoints_convert(hf_dir, tmp_path):
    """Fine-tune a classifier from a ViTModel backbone (keys without `vit.`), and take the
    backbone of a classifier (drop its head): same backbone weights either way."""
    ref_model, directory = hf_dir
    backbone, bb_vars = jimm_linen.from_pretrained(directory, num_labels=0, dont_load=["head/.*"])
    assert "head" not in bb_vars["params"] and backbone.config.num_labels == 0
    jimm_linen.save_pretrained(backbone, bb_vars, tmp_path / "backbone")
    assert not any(k.startswith("vit.") for k in load_file(tmp_path / "backbone" / "model.safetensors"))
    model, variables = jimm_linen.from_pretrained(tmp_path / "backbone", num_labels=3, dont_load=["head/.*"])
    _, original = jimm_linen.from_pretrained(directory)
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["Transformer"], original["params"]["Transformer"])
    assert variables["params"]["head"]["kernel"].shape == (32, 3)


def test_bf16_checkpoint_with_fresh_head_stays_bf16(hf_dir, tmp_path):
    ref_model, _ = hf_dir
    ref_model.to(torch.bfloat16).save_pretrained(tmp_path)
    ref_model.to(torch.float32)
    _, variables = jimm_linen.from_pretrained(tmp_path, num_labels=7, dont_load=["head/.*"])
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}


def test_pruned_heads_are_refused(hf_dir, tmp_path):
    _, directory = hf_dir
    cfg = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "pruned_heads": {"0": [1]}}))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="pruned_heads"):
        jimm_linen.from_pretrained(tmp_path)


def test_unsavable_config_writes_nothing(hf_dir, tmp_path):
    import dataclasses

    _, directory = hf_dir
    model, variables = jimm_linen.from_pretrained(directory)
    mean_model = model.clone(config=dataclasses.replace(model.config, pooling="mean"), parent=None)
    with pytest.raises(ValueError, match="only class-token pooling"):
        jimm_linen.save_pretrained(mean_model, variables, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_key_in_two_shards_is_an_error(hf_dir, tmp_path):
    _, directory = hf_dir
    state = load_file(directory / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    first = dict(list(state.items())[:5])
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(state, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00002-of-00002.safetensors" for k in state}
    weight_map.update({k: "model-00001-of-00002.safetensors" for k in first})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="is in more than one weight file"):
        jimm_linen.from_pretrained(tmp_path)
