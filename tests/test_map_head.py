"""The attention-pooling (MAP) head against HF's SiglipMultiheadAttentionPoolingHead."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

from jimm_linen import ViTConfig
from jimm_linen.checkpoint import FLATTEN, IDENTITY, LinearKernel
from jimm_linen.layers import MAPHead
from jimm_nnx.reference import perturb_
from tests.helpers import max_rel_diff


@pytest.mark.parametrize("act,eps", [("gelu_pytorch_tanh", 1e-6), ("gelu", 1e-5)])
def test_map_head_matches_siglip(act, eps):
    d, heads, mlp = 32, 4, 48
    cfg = SiglipVisionConfig(hidden_size=d, num_attention_heads=heads, intermediate_size=mlp,
                             hidden_act=act, layer_norm_eps=eps)
    torch.manual_seed(0)
    ref = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    perturb_(ref, 1)
    x = np.random.RandomState(0).randn(2, 9, d).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()

    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    q_w, k_w, v_w = np.split(sd["attention.in_proj_weight"], 3)
    q_b, k_b, v_b = np.split(sd["attention.in_proj_bias"], 3)
    qkv = LinearKernel(1)

    def proj(w, b, shape):
        return {"kernel": qkv.to_linen(w, shape), "bias": FLATTEN.to_linen(b, shape[1:])}

    params = {
        "probe": sd["probe"],
        "MultiHeadDotProductAttention_0": {
            "query": proj(q_w, q_b, (d, heads, d // heads)),
            "key": proj(k_w, k_b, (d, heads, d // heads)),
            "value": proj(v_w, v_b, (d, heads, d // heads)),
            "out": {"kernel": LinearKernel(2).to_linen(sd["attention.out_proj.weight"], (heads, d // heads, d)),
                    "bias": IDENTITY.to_linen(sd["attention.out_proj.bias"], (d,))},
        },
        "LayerNorm_0": {"scale": sd["layernorm.weight"], "bias": sd["layernorm.bias"]},
        "MlpBlock_0": {"Dense_0": {"kernel": sd["mlp.fc1.weight"].T, "bias": sd["mlp.fc1.bias"]},
                       "Dense_1": {"kernel": sd["mlp.fc2.weight"].T, "bias": sd["mlp.fc2.bias"]}},
    }
    tower = ViTConfig(hidden_size=d, num_attention_heads=heads, intermediate_size=mlp, hidden_act=act,
                      layer_norm_eps=eps, pooling="map")
    out = MAPHead(tower).apply({"params": params}, jnp.asarray(x))
    assert out.shape == (2, d)
    assert max_rel_diff(out, expected) <= 1e-5
