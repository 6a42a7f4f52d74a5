"""Zoo models: published parameter counts and FLOPs, published layer names, end-to-end forward."""
from __future__ import annotations

import numpy as np
import pytest

from layers import PisplitError, load_model
from layers.zoo import ZOO, zoo_model

# (params, multiply-accumulates of conv + dense layers) as published:
#   LeNet-5: LeCun et al. 1998 architecture (61,706 params; 0.4165M MACs computed from it)
#   AlexNet, VGG16, ResNet50: Sze et al., "Efficient Processing of Deep Neural Networks" (2017),
#     Table: 61M / 724M, 138M / 15.5G, 25.5M / 3.9G; exact parameter counts from Caffe/Keras
#   Xception: Keras applications (22,910,480); 8.4G FLOPs (multiply-adds) in Tan & Le, EfficientNet, Table 2
#   MobileNetV1: Howard et al. 2017, Table 8: 4.2M params, 569M mult-adds (Keras: 4,253,864)
#   C3D: Tran et al. 2015 with a 101-class head: ~78M params; 38.5 GFLOPs (multiply-adds) as commonly cited
PUBLISHED = {
    "lenet5": (61_706, 0.4165e6),
    "alexnet": (60_965_224, 724e6),
    "vgg16": (138_357_544, 15.5e9),
    "resnet50": (25_636_712, 3.9e9),
    "xception": (22_910_480, 8.4e9),
    "mobilenet_v1": (4_253_864, 569e6),
    "c3d": (78e6, 38.5e9),
    # ViT-B/16: torchvision's 86,567,656 parameters; 17.6 GFLOPs (multiply-adds) published, of which the
    #   attention products (BATCH_MATMUL, 0.72G) are not conv/dense: 16.85G here
    # KWT-3: Berg et al. 2021 give 5.361M parameters (this build 5,372,579, see layers.zoo.kwt3); MACs from the architecture
    "vit_b16": (86_567_656, 16.85e9),
    "kwt3": (5.361e6, 0.527e9),
}

NAMES = {
    "vgg16": ["block1_conv1", "block1_conv2", "block5_pool", "fc1", "fc2", "predictions"],
    "resnet50": ["conv1_conv", "conv2_block1_1_conv", "conv2_block1_0_conv", "conv5_block3_out", "avg_pool", "predictions"],
    "xception": ["block1_conv1", "block2_sepconv1", "block14_sepconv2_act", "predictions"],
    "alexnet": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"],
    "c3d": ["conv1a", "conv2a", "conv3a", "conv3b", "conv5b", "fc6", "fc7", "fc8"],
    "mobilenet_v1": ["conv1", "conv_dw_1", "conv_pw_13", "conv_preds"],
    "lenet5": ["conv1", "conv2", "fc1", "fc3"],
    "vit_b16": ["conv_proj", "class_token", "encoder_layer_0_attention_in_proj", "encoder_layer_11_mlp_2", "head"],
    "kwt3": ["patch_projection", "class_token", "encoder_layer_0_attention_out_proj", "encoder_layer_11_mlp_1", "head"],
}


def macs(graph) -> float:
    total = 0
    for i, n in enumerate(graph.nodes):
        if n.op in ("conv2d", "conv3d", "dense"):
            out = graph.shapes[n.outputs[0]]
            k = n.weight_shapes["kernel"]
            total += np.prod(out[:-1]) * np.prod(k)
    return float(total)


@pytest.mark.parametrize("name", list(ZOO))
def test_params_and_flops_match_published(name):
    g = zoo_model(name)
    params, published_macs = PUBLISHED[name]
    assert g.totals()["params"] == pytest.approx(params, rel=0.02)
    assert macs(g) == pytest.approx(published_macs, rel=0.02)
    # FLOPs are 2 x MACs for conv/dense nodes (plus any fused activation)
    conv_flops = sum(g.cost(i).flops for i, n in enumerate(g.nodes) if n.op in ("conv2d", "conv3d", "dense"))
    assert 2 * macs(g) <= conv_flops <= 2 * macs(g) * 1.01


@pytest.mark.parametrize("name", list(ZOO))
def test_published_layer_names(name):
    g = zoo_model(name)
    for layer in NAMES[name]:
        g.node_index(layer)


@pytest.mark.parametrize("name", list(ZOO))
def test_forward_end_to_end(name):
    g = zoo_model(name)
    x = g.random_input(seed=7)
    out = g.forward(**x)
    assert out.dtype == np.float32
    assert out.shape == g.shapes[g.outputs[0]]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-4)  # every zoo head ends in softmax
    assert out.std() > 0
    t = g.totals()
    assert t["flops"] == sum(g.cost(i).flops for i in range(len(g)))
    assert t["weight_bytes"] == sum(g.cost(i).weight_bytes for i in range(len(g))) == 4 * t["params"]
    assert t["output_bytes"] == sum(g.cost(i).output_bytes for i in range(len(g)))


def test_weights_are_seeded():
    a, b, c = zoo_model("lenet5", seed=0), zoo_model("lenet5", seed=0), zoo_model("lenet5", seed=1)
    np.testing.assert_array_equal(a.weights["fc1/kernel"], b.weights["fc1/kernel"])
    assert not np.array_equal(a.weights["fc1/kernel"], c.weights["fc1/kernel"])


def test_unknown_model_lists_the_zoo():
    with pytest.raises(PisplitError, match="'resnet51': not a zoo model .*resnet50"):
        load_model("resnet51")
