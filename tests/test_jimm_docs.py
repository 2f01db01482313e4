"""jimm's documentation, verbatim: every Python block of the `jimm` library's README and docs
pages (jax-image-models 0.4.0: index, ViT, CLIP, SigLIP, DINOv2, DINOv3) runs with `import jimm_nnx as jimm`.

The blocks below are jimm's text; the only changes are `import jimm` -> `import jimm_nnx as jimm`
and each hub id -> a local checkpoint of the same kind and input sizes (random weights, tiny
widths), built here. Each page runs top to bottom in a fresh interpreter, as a reader would
run it (its blocks share names, and `jax.set_mesh` is process-wide state). Where a page says
what comes out (a shape, "params are automatically sharded across fsdp axis"), that is checked
too. jimm's README has no Python block. One addition: the DINOv3 page's second block calls
the model on `images_224`, `images_336` and `images_192x256`, which the page never defines; a
block before it defines them (random images of those sizes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# jimm 0.4.0 docs/index.md
INDEX = [
    '''import jimm

# GPU: try H100 Mosaic kernel, fall back to Triton, then XLA
model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14",
                                   attention_fn=jimm.make_tokamax_attention(["mosaic", "triton", "xla"]))

# TPU: try Splash attention, fall back to chunked XLA
model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14",
                                   attention_fn=jimm.make_tokamax_attention(["mosaic_tpu", "xla_chunked"]))
''',
    '''from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh
import jax

n_devices = jax.device_count()
mesh = Mesh(
    mesh_utils.create_device_mesh((1, n_devices)),
    ("data", "fsdp"),
    axis_types=(AxisType.Explicit, AxisType.Explicit),
)
jax.set_mesh(mesh)

model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14")
# params are automatically sharded across fsdp axis
''',
    # "Pass `sharding=jimm.common.sharding.NoSharding()` to disable all sharding." (prose)
    '''model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14", sharding=jimm.common.sharding.NoSharding())
''',
]

FSDP_RECIPE = '''from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh
import jax

n_devices = jax.device_count()
mesh = Mesh(
    mesh_utils.create_device_mesh((1, n_devices)),
    ("data", "fsdp"),
    axis_types=(AxisType.Explicit, AxisType.Explicit),
)
jax.set_mesh(mesh)

'''


def _attention_block(call: str, pad: str) -> str:
    return f'''import jimm

# GPU: try H100 Mosaic kernel, fall back to Triton, then XLA
model = {call},
{pad}attention_fn=jimm.make_tokamax_attention(["mosaic", "triton", "xla"]))

# TPU: try Splash attention, fall back to chunked XLA
model = {call},
{pad}attention_fn=jimm.make_tokamax_attention(["mosaic_tpu", "xla_chunked"]))
'''


# jimm 0.4.0 docs/models/ViT.md
VIT = [
    '''import jimm
import numpy as np

model = jimm.VisionTransformer.from_pretrained("google/vit-base-patch16-224")

images = np.random.rand(4, 224, 224, 3).astype(np.float32)
embeddings = model(images)  # shape: (4, 768)
''',
    _attention_block('jimm.VisionTransformer.from_pretrained("google/vit-base-patch16-224"', " " * 48),
    FSDP_RECIPE + '''model = jimm.VisionTransformer.from_pretrained("google/vit-base-patch16-224")
# model params are automatically sharded across fsdp axis
''',
    '''model = jimm.VisionTransformer.from_pretrained("google/vit-base-patch16-224", sharding=jimm.common.sharding.NoSharding())
''',
]

# jimm 0.4.0 docs/models/CLIP.md
CLIP = [
    '''import jimm
import numpy as np

model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14", use_pytorch=True)

images = np.random.rand(4, 224, 224, 3).astype(np.float32)
text = np.array([[49406, 1234, 49407, 0, 0]])  # tokenized text, shape (batch, seq_len)
logits = model(images, text)  # shape: (4, 1)
''',
    _attention_block('jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14", use_pytorch=True', " " * 35),
    FSDP_RECIPE + '''model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14", use_pytorch=True)
# model params are automatically sharded across fsdp axis
''',
    '''model = jimm.CLIP.from_pretrained("openai/clip-vit-large-patch14", use_pytorch=True, sharding=jimm.common.sharding.NoSharding())
''',
]

# jimm 0.4.0 docs/models/SigLIP.md
SIGLIP = [
    '''import jimm
import numpy as np

model = jimm.SigLIP.from_pretrained("google/siglip-base-patch16-256")

images = np.random.rand(4, 256, 256, 3).astype(np.float32)
text = np.ones((4, 64), dtype=np.int32)  # tokenized text, shape (batch, seq_len)
logits = model(images, text)  # shape: (4, 4)
''',
    _attention_block('jimm.SigLIP.from_pretrained("google/siglip-base-patch16-256"', " " * 37),
    FSDP_RECIPE + '''model = jimm.SigLIP.from_pretrained("google/siglip-base-patch16-256")
# model params are automatically sharded across fsdp axis
''',
    '''model = jimm.SigLIP.from_pretrained("google/siglip-base-patch16-256", sharding=jimm.common.sharding.NoSharding())
''',
]

# jimm 0.4.0 docs/models/DINOv2.md
DINOV2 = [
    '''import jimm
import numpy as np

model = jimm.DINOv2Model.from_pretrained("facebook/dinov2-small")

images = np.random.rand(4, 518, 518, 3).astype(np.float32)
embeddings = model(images)  # shape: (4, 384)
''',
    _attention_block('jimm.DINOv2Model.from_pretrained("facebook/dinov2-base"', " " * 42),
    FSDP_RECIPE + '''model = jimm.DINOv2Model.from_pretrained("facebook/dinov2-base")
# model params are automatically sharded across fsdp axis
''',
]

# jimm 0.4.0 docs/models/DINOv3.md
DINOV3 = [
    '''import jimm
import numpy as np

model = jimm.DINOv3Model.from_pretrained("facebook/dinov3-vits16-pretrain-lvd1689m")

# Standard 224x224 input
images = np.random.rand(4, 224, 224, 3).astype(np.float32)
embeddings = model(images)  # shape: (4, 384)

# Variable image size -- any multiple of patch_size (16)
images_rect = np.random.rand(4, 192, 256, 3).astype(np.float32)
embeddings_rect = model(images_rect)  # shape: (4, 384)
''',
    # Not jimm's text: the names the next block uses and the page never defines.
    '''images_224, images_336, images_192x256 = (np.random.rand(2, h, w, 3).astype(np.float32)
                                            for h, w in ((224, 224), (336, 336), (192, 256)))
''',
    '''import jimm

model = jimm.DINOv3Model.from_pretrained("facebook/dinov3-vits16-pretrain-lvd1689m")

model(images_224)      # 224x224 -> 196 patch tokens
model(images_336)      # 336x336 -> 441 patch tokens
model(images_192x256)  # 192x256 -> 192 patch tokens
''',
    FSDP_RECIPE + '''model = jimm.DINOv3Model.from_pretrained("facebook/dinov3-vits16-pretrain-lvd1689m")
# model params are automatically sharded across fsdp axis
''',
]

# What each page says comes out, checked after the block with that index ran:
# (block index, Python expression that must be true in the page's namespace).
SHARDED = "any('fsdp' in str(x.sharding.spec) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))"
REPLICATED = "all(x.sharding.is_fully_replicated for x in jax.tree.leaves(nnx.state(model, nnx.Param)))"
PAGES = {
    "index": (INDEX, [(1, SHARDED), (2, REPLICATED)]),
    "ViT": (VIT, [(0, "embeddings.shape == (4, 10)"), (2, SHARDED), (3, REPLICATED)]),
    "CLIP": (CLIP, [(0, "logits.shape == (4, 1)"), (2, SHARDED), (3, REPLICATED)]),
    "SigLIP": (SIGLIP, [(0, "logits.shape == (4, 4)"), (2, SHARDED), (3, REPLICATED)]),
    "DINOv2": (DINOV2, [(0, "embeddings.shape == (4, 32)"), (2, SHARDED)]),
    "DINOv3": (DINOV3, [(0, "embeddings.shape == (4, 32) and embeddings_rect.shape == (4, 32)"), (3, SHARDED)]),
}

DRIVER = '''
import json, sys
import jax
from flax import nnx
payload = json.loads(sys.argv[1])
namespace = {}
for i, block in enumerate(payload["blocks"]):
    exec(compile(block, f"<{payload['page']} block {i}>", "exec"), namespace)
    for index, check in payload["checks"]:
        if index == i:
            assert eval(check, {"jax": jax, "nnx": nnx, **namespace}), f"block {i}: {check}"
print("ok", len(payload["blocks"]))
'''


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """hub id -> a local checkpoint with the hub model's kind and input sizes (random weights,
    small widths that the 8 test devices divide)."""
    import transformers

    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    out = {}

    out["google/vit-base-patch16-224"] = root / "vit"
    transformers.ViTForImageClassification(transformers.ViTConfig(
        **small, image_size=224, patch_size=16, num_labels=10)).save_pretrained(out["google/vit-base-patch16-224"])

    out["openai/clip-vit-large-patch14"] = root / "clip"
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        projection_dim=16, vision_config=dict(**small, image_size=224, patch_size=14),
        text_config=dict(**small, vocab_size=49408, max_position_embeddings=77, eos_token_id=2)))
    clip.save_pretrained(out["openai/clip-vit-large-patch14"])
    # The hub repo ships pytorch_model.bin, which the page loads with use_pytorch=True.
    torch.save(clip.state_dict(), out["openai/clip-vit-large-patch14"] / "pytorch_model.bin")

    out["google/siglip-base-patch16-256"] = root / "siglip"
    transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=dict(**small, image_size=256, patch_size=16),
        text_config=dict(**small, vocab_size=128, max_position_embeddings=64, pad_token_id=1, eos_token_id=1,
                         bos_token_id=None))).save_pretrained(out["google/siglip-base-patch16-256"])
    out["facebook/dinov2-small"] = out["facebook/dinov2-base"] = root / "dinov2"
    dinov2 = dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=4)  # no intermediate_size
    transformers.Dinov2Model(transformers.Dinov2Config(**dinov2, image_size=518, patch_size=14)).save_pretrained(
        out["facebook/dinov2-small"])
    out["facebook/dinov3-vits16-pretrain-lvd1689m"] = root / "dinov3"
    transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**small, patch_size=16, num_register_tokens=4)
                                ).save_pretrained(out["facebook/dinov3-vits16-pretrain-lvd1689m"])
    return out


def adapt(block: str, checkpoints: dict[str, Path]) -> str:
    """The only changes to jimm's text: the import, and hub ids -> local directories."""
    block = block.replace("import jimm\n", "import jimm_nnx as jimm\n")
    for hub_id, directory in checkpoints.items():
        block = block.replace(f'"{hub_id}"', repr(str(directory)))
    return block


@pytest.mark.parametrize("page", sorted(PAGES))
def test_documented_usage_runs(page, checkpoints):
    blocks, checks = PAGES[page]
    adapted = [adapt(b, checkpoints) for b in blocks]
    assert all("jimm_nnx as jimm" in b for b in adapted if "import jimm" in b)
    assert not any(hub_id in b for b in adapted for hub_id in checkpoints)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    payload = json.dumps({"page": page, "blocks": adapted, "checks": checks})
    result = subprocess.run([sys.executable, "-c", DRIVER, payload], capture_output=True, text=True, env=env,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["ok", str(len(blocks))]
