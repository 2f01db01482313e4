"""big_vision `.npz` import (`jimm_linen.big_vision`).

The references are HF Transformers' PyTorch SigLIP and ViT with seeded random weights. The test
writes their weights in big_vision's layout with its own mapping (the inverse of HF's SigLIP / ViT
conversion scripts, below), in the scanned and the loop layout, loads that with jimm, and compares
jimm's outputs with HF's: nothing on the expected side goes through jimm's loader.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, NamedSharding
from transformers import SiglipConfig as HFSiglipConfig
from transformers import SiglipModel, ViTForImageClassification, ViTModel
from transformers import ViTConfig as HFViTConfig

import jimm_linen
from jimm_linen import big_vision
from jimm_linen.checkpoint import CheckpointError
from jimm_nnx.reference import perturb_
from tests.helpers import assert_close, nhwc

SIGLIP_HF = dict(
    text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=8, projection_size=48),
    vision_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=16, patch_size=4))
# The same model as a big_vision two_towers `config.model` (sizes spelled out; no variant is this small).
SIGLIP_BV = dict(
    image_model="vit", text_model="proj.image_text.text_transformer",
    image=dict(width=48, depth=2, mlp_dim=64, num_heads=4, patch_size=(4, 4), pool_type="map", scan=True),
    text=dict(width=32, depth=2, mlp_dim=40, num_heads=4, vocab_size=64),
    out_dim=(None, 48), bias_init=-10.0, temperature_init=10.0)
# big_vision's MLP uses nn.gelu (tanh) and Flax's LayerNorm eps 1e-6: the HF ViT reference does too.
VIT_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, image_size=16,
              patch_size=4, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
VIT_BV = dict(width=32, depth=2, mlp_dim=40, num_heads=4, patch_size=4, pool_type="tok")
IMAGES = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)  # NCHW, as HF takes them
IDS = np.random.default_rng(1).integers(0, 64, (3, 8)).astype(np.int64)


# --- HF -> big_vision, written here independently of jimm -----------------------------------

def _numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _block(sd, hf, bv, heads, names, out):
    """One pre-LN encoder block: torch Linear (out, in) -> kernel (in, out); q/k/v kernels
    (embed, heads, head_dim), biases (heads, head_dim); the out kernel (heads, head_dim, embed)."""
    ln0, ln1, q, k, v, o, fc1, fc2 = names
    attn = f"{bv}/MultiHeadDotProductAttention_0"
    for ours, theirs in (("LayerNorm_0", ln0), ("LayerNorm_1", ln1)):
        out[f"{bv}/{ours}/scale"] = sd[f"{hf}.{theirs}.weight"]
        out[f"{bv}/{ours}/bias"] = sd[f"{hf}.{theirs}.bias"]
    for ours, theirs in (("query", q), ("key", k), ("value", v)):
        w = sd[f"{hf}.{theirs}.weight"]
        out[f"{attn}/{ours}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
        out[f"{attn}/{ours}/bias"] = sd[f"{hf}.{theirs}.bias"].reshape(heads, -1)
    w = sd[f"{hf}.{o}.weight"]
    out[f"{attn}/out/kernel"] = w.T.reshape(heads, -1, w.shape[0])
    out[f"{attn}/out/bias"] = sd[f"{hf}.{o}.bias"]
    for ours, theirs in (("Dense_0", fc1), ("Dense_1", fc2)):
        out[f"{bv}/MlpBlock_0/{ours}/kernel"] = sd[f"{hf}.{theirs}.weight"].T
        out[f"{bv}/MlpBlock_0/{ours}/bias"] = sd[f"{hf}.{theirs}.bias"]


SIGLIP_BLOCK = ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
VIT_BLOCK = ("layernorm_before", "layernorm_after", "attention.q_proj", "attention.k_proj", "attention.v_proj",
             "attention.o_proj", "mlp.fc1", "mlp.fc2")


def siglip_to_big_vision(model) -> dict[str, np.ndarray]:
    sd, cfg = _numpy(model), model.config
    t, v = cfg.text_config, cfg.vision_config
    out = {
        "txt/Embed_0/embedding": sd["text_model.embeddings.token_embedding.weight"],
        "txt/pos_embedding": sd["text_model.embeddings.position_embedding.weight"][None],
        "txt/Encoder_0/encoder_norm/scale": sd["text_model.final_layer_norm.weight"],
        "txt/Encoder_0/encoder_norm/bias": sd["text_model.final_layer_norm.bias"],
        "txt/head/kernel": sd["text_model.head.weight"].T,
        "txt/head/bias": sd["text_model.head.bias"],
        "img/embedding/kernel": sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
        "img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
        "img/pos_embedding": sd["vision_model.embeddings.position_embedding.weight"][None],
        "img/Transformer/encoder_norm/scale": sd["vision_model.post_layernorm.weight"],
        "img/Transformer/encoder_norm/bias": sd["vision_model.post_layernorm.bias"],
        "img/MAPHead_0/probe": sd["vision_model.head.probe"],
        "img/MAPHead_0/LayerNorm_0/scale": sd["vision_model.head.layernorm.weight"],
        "img/MAPHead_0/LayerNorm_0/bias": sd["vision_model.head.layernorm.bias"],
        "t": sd["logit_scale"],
        "b": sd["logit_bias"],
    }
    for i in range(t.num_hidden_layers):
        _block(sd, f"text_model.encoder.layers.{i}", f"txt/Encoder_0/encoderblock_{i}", t.num_attention_heads,
               SIGLIP_BLOCK, out)
    for i in range(v.num_hidden_layers):
        _block(sd, f"vision_model.encoder.layers.{i}", f"img/Transformer/encoderblock_{i}", v.num_attention_heads,
               SIGLIP_BLOCK, out)
    # The MAP head: torch MultiheadAttention fuses q, k, v (in that order) in in_proj_*.
    head, heads, d = "img/MAPHead_0", v.num_attention_heads, v.hidden_size
    w, b = sd["vision_model.head.attention.in_proj_weight"], sd["vision_model.head.attention.in_proj_bias"]
    for j, name in enumerate(("query", "key", "value")):
        out[f"{head}/MultiHeadDotProductAttention_0/{name}/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, heads, -1)
        out[f"{head}/MultiHeadDotProductAttention_0/{name}/bias"] = b[j * d:(j + 1) * d].reshape(heads, -1)
    w = sd["vision_model.head.attention.out_proj.weight"]
    out[f"{head}/MultiHeadDotProductAttention_0/out/kernel"] = w.T.reshape(heads, -1, d)
    out[f"{head}/MultiHeadDotProductAttention_0/out/bias"] = sd["vision_model.head.attention.out_proj.bias"]
    for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        out[f"{head}/MlpBlock_0/{ours}/kernel"] = sd[f"vision_model.head.mlp.{theirs}.weight"].T
        out[f"{head}/MlpBlock_0/{ours}/bias"] = sd[f"vision_model.head.mlp.{theirs}.bias"]
    return out


def vit_to_big_vision(model, old_style: bool = False) -> dict[str, np.ndarray]:
    """big_vision's ViT adds `pos_embedding` (grid only) before prepending `cls`, so HF's class
    position row folds into `cls`. `old_style`: the original ViT release's layout instead: pre-Linen
    block numbering, `Transformer/posembed_input/pos_embedding` over class token + grid."""
    sd, cfg = _numpy(model), model.config
    p = "vit." if any(k.startswith("vit.") for k in sd) else ""
    cls, pos = sd[f"{p}embeddings.cls_token"], sd[f"{p}embeddings.position_embeddings"]
    out = {
        "embedding/kernel": sd[f"{p}embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd[f"{p}embeddings.patch_embeddings.projection.bias"],
        "Transformer/encoder_norm/scale": sd[f"{p}layernorm.weight"],
        "Transformer/encoder_norm/bias": sd[f"{p}layernorm.bias"],
    }
    if old_style:
        out["cls"], out["Transformer/posembed_input/pos_embedding"] = cls, pos
    else:
        out["cls"], out["pos_embedding"] = cls + pos[:, :1], pos[:, 1:]
    for i in range(cfg.num_hidden_layers):
        _block(sd, f"{p}layers.{i}", f"Transformer/encoderblock_{i}", cfg.num_attention_heads, VIT_BLOCK, out)
    if "classifier.weight" in sd:
        out["head/kernel"], out["head/bias"] = sd["classifier.weight"].T, sd["classifier.bias"]
    if f"{p}pooler.dense.weight" in sd:
        out["pre_logits/kernel"], out["pre_logits/bias"] = sd[f"{p}pooler.dense.weight"].T, sd[f"{p}pooler.dense.bias"]
    if old_style:
        pre_linen = {"LayerNorm_1/": "LayerNorm_2/", "MlpBlock_0/": "MlpBlock_3/",
                     "MultiHeadDotProductAttention_0/": "MultiHeadDotProductAttention_1/"}
        out = {re.sub(r"(encoderblock_\d+/)(LayerNorm_1/|MultiHeadDotProductAttention_0/|MlpBlock_0/)",
                      lambda m: m.group(1) + pre_linen[m.group(2)], k): v for k, v in out.items()}
    return out


def scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scanned layout: `encoderblock_{i}/x` stacked into `encoderblock/x`."""
    layers: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for k, v in flat.items():
        m = re.fullmatch(r"(.*)encoderblock_(\d+)/(.*)", k)
        if m:
            layers.setdefault(f"{m.group(1)}encoderblock/{m.group(3)}", {})[int(m.group(2))] = v
        else:
            out[k] = v
    for k, per in layers.items():
        out[k] = np.stack([per[i] for i in range(len(per))])
    return out


def write_npz(path, flat, prefix: str = ""):
    np.savez(path, **{prefix + k: v for k, v in flat.items()})
    return path


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def siglip_ref():
    torch.manual_seed(0)
    model = SiglipModel(HFSiglipConfig(**SIGLIP_HF)).eval()
    perturb_(model, seed=1)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(IDS), pixel_values=torch.from_numpy(IMAGES))
        features = model.get_image_features(pixel_values=torch.from_numpy(IMAGES))
    features = getattr(features, "pooler_output", features)
    ref = {k: getattr(out, k).numpy() for k in ("image_embeds", "text_embeds", "logits_per_image")}
    return model, siglip_to_big_vision(model), ref, features.numpy()


@pytest.fixture(scope="module")
def siglip_files(siglip_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("bv")
    flat = siglip_ref[1]
    return {"loop": write_npz(d / "loop.npz", flat), "scanned": write_npz(d / "scanned.npz", scanned(flat), "params/")}


_COMPILED = {}


def run(module, variables, *inputs):
    """`jit(module.apply)`, compiled once per architecture and layout for the whole file."""
    key = (type(module).__name__, module.config, module.scan)
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(module.apply)
    return _COMPILED[key](variables, *inputs)


def check_siglip(module, variables, ref):
    out = run(module, variables, jnp.asarray(nhwc(IMAGES)), jnp.asarray(IDS, jnp.int32))
    for k in ("image_embeds", "text_embeds", "logits_per_image"):
        assert_close(getattr(out, k), ref[k], what=k)
    return out


# --- SigLIP ---------------------------------------------------------------------------------

def test_siglip_config_from_big_vision_matches_hf(siglip_ref):
    ours = big_vision.siglip_config(SIGLIP_BV, image_size=16, text_length=8)
    hf = jimm_linen.SigLIPConfig.from_hf_config(siglip_ref[0].config.to_dict())
    # from_hf_config keeps the default tower's pooler_output_size (768; unused without a pooler).
    hf = dataclasses.replace(hf, vision=dataclasses.replace(hf.vision, pooler_output_size=None))
    assert ours == hf


@pytest.mark.parametrize("layout,scan", [("loop", True), ("scanned", False), ("scanned", True)])
def test_siglip_matches_hf(siglip_ref, siglip_files, layout, scan):
    """A looped file into the scanned layout and back; the sizes the big_vision config leaves out
    (image size, text length) come from the file."""
    module, variables = big_vision.load_npz(siglip_files[layout], SIGLIP_BV, scan=scan)
    assert module.scan == scan and module.config.text.max_position_embeddings == 8
    assert ("encoderblock" in variables["params"]["img"]["Transformer"]) == scan
    check_siglip(module, variables, siglip_ref[2])


@pytest.mark.parametrize("layout,scan", [("loop", True), ("scanned", False), ("scanned", True)])
def test_each_file_tensor_is_read_once(siglip_files, layout, scan, monkeypatch):
    """Scanned tensors are read once whatever the layout asked for: one stacked read when the
    model is scanned too, one cached read for all its layers when it is not."""
    reads = []
    original = big_vision.NpzReader.get
    monkeypatch.setattr(big_vision.NpzReader, "get", lambda self, key: reads.append(key) or original(self, key))
    big_vision.load_npz(siglip_files[layout], SIGLIP_BV, scan=scan)
    assert reads and len(reads) == len(set(reads)), sorted(k for k in set(reads) if reads.count(k) > 1)


def test_siglip_npz_to_hf_checkpoint(siglip_ref, siglip_files, tmp_path):
    """big_vision -> jimm -> save_pretrained -> transformers.SiglipModel reproduces the reference."""
    config = big_vision.siglip_config(SIGLIP_BV, image_size=16, text_length=8)
    module, variables = big_vision.load_npz(siglip_files["scanned"], config)
    jimm_linen.save_pretrained(module, variables, tmp_path / "hf")
    hf = SiglipModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(IDS), pixel_values=torch.from_numpy(IMAGES))
    for k in ("image_embeds", "text_embeds", "logits_per_image"):
        assert_close(getattr(out, k).numpy(), siglip_ref[2][k], what=k)


def test_image_tower_as_vit(siglip_ref, siglip_files):
    """`file.npz:img` (big_vision's sub-part syntax): the image tower alone, as a MAP-pooled ViT."""
    module, variables = big_vision.load_npz(f"{siglip_files['scanned']}:img", SIGLIP_BV["image"], scan=False)
    assert module.config.pooling == "map" and module.config.num_labels == 0
    assert_close(run(module, variables, jnp.asarray(nhwc(IMAGES))), siglip_ref[3], what="image features")


# --- plain ViT ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_refs():
    torch.manual_seed(2)
    classifier = ViTForImageClassification(HFViTConfig(**VIT_HF, num_labels=5)).eval()
    perturb_(classifier, seed=3)
    backbone = ViTModel(HFViTConfig(**VIT_HF)).eval()  # with HF's pooler = big_vision's pre_logits
    perturb_(backbone, seed=4)
    with torch.no_grad():
        logits = classifier(pixel_values=torch.from_numpy(IMAGES)).logits.numpy()
        pooled = backbone(pixel_values=torch.from_numpy(IMAGES)).pooler_output.numpy()
    return classifier, logits, backbone, pooled


@pytest.mark.parametrize("old_style", [False, True])
def test_vit_classifier_matches_hf(vit_refs, tmp_path, old_style):
    """pool_type="tok" with a head; `num_classes` from the file. The current layout (grid-only
    `pos_embedding`, scanned here) and the original ViT release's (pre-Linen numbering,
    `posembed_input` with a class-token row, looped)."""
    classifier, logits = vit_refs[:2]
    flat = vit_to_big_vision(classifier, old_style=old_style)
    path = write_npz(tmp_path / "vit.npz", flat if old_style else scanned(flat))
    module, variables = big_vision.load_npz(path, VIT_BV, scan=False)
    assert module.config.num_labels == 5 and module.config.pooling == "cls"
    assert_close(run(module, variables, jnp.asarray(nhwc(IMAGES))), logits, what="logits")


def test_vit_pre_logits_matches_hf_pooler(vit_refs, tmp_path):
    """rep_size=True (`pre_logits` + tanh) without a head against HF ViTModel's pooler."""
    _, _, backbone, pooled = vit_refs
    path = write_npz(tmp_path / "vit.npz", vit_to_big_vision(backbone), "params/")
    module, variables = big_vision.load_npz(path, {**VIT_BV, "rep_size": True}, scan=False)
    assert module.config.pooler and module.config.num_labels == 0
    assert_close(run(module, variables, jnp.asarray(nhwc(IMAGES))), pooled, what="pooled")


def test_vit_config_from_big_vision():
    cfg = big_vision.vit_config(dict(variant="So400m/14", pool_type="map"), image_size=224)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.patch_size, cfg.pooling, cfg.num_labels) == (1152, 27, 4304, 16, 14, "map", 0)
    assert (cfg.hidden_act, cfg.layer_norm_eps) == ("gelu_pytorch_tanh", 1e-6)
    cfg = big_vision.vit_config(dict(variant="S/16", rep_size=True, pool_type="gap", posemb="sincos2d"),
                                image_size=224, num_classes=1000)
    assert (cfg.hidden_size, cfg.pooling, cfg.pooler, cfg.pooler_output_size, cfg.num_labels) == (
        384, "mean", True, 384, 1000)
    with pytest.raises(ValueError, match="pool_type '0'"):
        big_vision.vit_config(dict(variant="B/16", pool_type="0"), image_size=224)
    with pytest.raises(ValueError, match="unsupported big_vision field"):
        big_vision.vit_config(dict(variant="B/16", typo=1), image_size=224)


def test_sincos_position_table(vit_refs, tmp_path):
    """posemb="sincos2d": big_vision stores no table; jimm's `pos_embedding` gets big_vision's
    formula (checked by hand on a 2x2 grid: row (y=0, x=1) is [sin x*w, cos x*w, sin y*w, cos y*w]
    with w = (1, 1e-4) for width 8)."""
    row = big_vision.posemb_sincos_2d(2, 2, 8)[0, 1]
    np.testing.assert_allclose(row, [np.sin(1), np.sin(1e-4), np.cos(1), np.cos(1e-4), 0, 0, 1, 1], rtol=1e-6)
    flat = vit_to_big_vision(vit_refs[0])
    del flat["pos_embedding"], flat["cls"]
    path = write_npz(tmp_path / "vit.npz", flat)
    cfg = {**VIT_BV, "pool_type": "gap", "posemb": "sincos2d"}
    module, variables = big_vision.load_npz(path, cfg, image_size=16)
    assert module.config.pooling == "mean" and module.config.num_labels == 5
    np.testing.assert_array_equal(variables["params"]["pos_embedding"], big_vision.posemb_sincos_2d(4, 4, 32))
    flat["pos_embedding"] = np.zeros((1, 16, 32), np.float32)
    with pytest.raises(CheckpointError, match="pos_embedding"):
        big_vision.load_npz(write_npz(tmp_path / "extra.npz", flat), cfg, image_size=16)


# --- details of the file ----------------------------------------------------------------------

def test_bf16_kept_and_sharded_on_a_mesh(siglip_ref, tmp_path):
    flat = {k: v.astype(ml_dtypes.bfloat16) for k, v in scanned(siglip_ref[1]).items()}
    path = write_npz(tmp_path / "bf16.npz", flat)
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))
    _, variables = big_vision.load_npz(path, SIGLIP_BV, mesh=mesh)
    leaves = jax.tree.leaves(variables)
    assert {x.dtype for x in leaves} == {np.dtype(jnp.bfloat16)}
    assert all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh for x in leaves)
    emb = variables["params"]["txt"]["Embed_0"]["embedding"]
    np.testing.assert_array_equal(np.asarray(emb), flat["txt/Embed_0/embedding"])


def test_old_text_position_embedding_is_summed(siglip_ref, tmp_path):
    flat = dict(siglip_ref[1])
    extra = np.random.default_rng(5).standard_normal(flat["txt/pos_embedding"].shape).astype(np.float32)
    flat["txt/pos_embedding"] = flat["txt/pos_embedding"] - extra
    flat["txt/Encoder_0/pos_embedding"] = extra
    _, variables = big_vision.load_npz(write_npz(tmp_path / "old.npz", flat), SIGLIP_BV, scan=False)
    np.testing.assert_allclose(variables["params"]["txt"]["pos_embedding"], siglip_ref[1]["txt/pos_embedding"],
                               atol=1e-6)


def test_text_tower_without_head_gets_identity(tmp_path):
    torch.manual_seed(6)
    hf = SiglipModel(HFSiglipConfig(text_config={**SIGLIP_HF["text_config"], "hidden_size": 48},
                                    vision_config=SIGLIP_HF["vision_config"]))
    flat = siglip_to_big_vision(hf)
    bv = {**SIGLIP_BV, "text": {**SIGLIP_BV["text"], "width": 48}, "out_dim": (None, None)}
    with pytest.raises(CheckpointError, match=r"txt/head/bias"):
        big_vision.load_npz(write_npz(tmp_path / "head.npz", flat), bv)
    del flat["txt/head/kernel"], flat["txt/head/bias"]
    _, variables = big_vision.load_npz(write_npz(tmp_path / "nohead.npz", flat), bv)
    head = variables["params"]["txt"]["head"]
    np.testing.assert_array_equal(head["kernel"], np.eye(48, dtype=np.float32))
    np.testing.assert_array_equal(head["bias"], np.zeros(48, np.float32))


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "extra", "misshaped", "layers", "text_length"])
def test_bad_checkpoints_name_the_key(siglip_ref, tmp_path, case):
    flat = dict(siglip_ref[1])
    config = big_vision.siglip_config(SIGLIP_BV, image_size=16, text_length=8)
    key = {"missing": "txt/Encoder_0/encoderblock_1/LayerNorm_0/scale", "extra": "img/Extra_0/kernel",
           "misshaped": "txt/head/bias", "layers": "img/Transformer/encoderblock/LayerNorm_0/scale",
           "text_length": "txt/pos_embedding"}[case]
    if case == "missing":
        del flat[key]
    elif case == "extra":
        flat[key] = np.zeros((3, 3), np.float32)
    elif case == "misshaped":
        flat[key] = np.zeros((47,), np.float32)
    elif case == "layers":
        block = "img/Transformer/encoderblock_{}/LayerNorm_0/scale"
        flat[block.format(2)] = flat[block.format(0)]
        flat = scanned(flat)
    path = write_npz(tmp_path / "bad.npz", flat)
    if case == "text_length":
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, max_position_embeddings=10))
    with pytest.raises(CheckpointError) as err:
        big_vision.load_npz(path, config)
    assert key in str(err.value)
    if case == "text_length":
        assert "text_length=8" in str(err.value)


def test_config_errors():
    with pytest.raises(ValueError, match="bias_init"):
        big_vision.siglip_config({**SIGLIP_BV, "bias_init": None}, image_size=16, text_length=8)
    with pytest.raises(ValueError, match="image projection"):
        big_vision.siglip_config({**SIGLIP_BV, "out_dim": 48}, image_size=16, text_length=8)
    with pytest.raises(ValueError, match="must be equal"):
        big_vision.siglip_config({**SIGLIP_BV, "out_dim": (None, None)}, image_size=16, text_length=8)
