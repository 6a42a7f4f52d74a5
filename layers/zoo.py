"""The model zoo: published architectures with deterministic seeded weights (nothing is downloaded).

Node names follow the usual published naming so plans and users can refer to them: Keras
applications names for VGG16, ResNet50, Xception and MobileNetV1; the papers' names for LeNet-5,
AlexNet and C3D. A Keras SeparableConv2D `x` becomes `x_depthwise` + `x` (pointwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .builder import GraphBuilder
from .errors import PisplitError
from .graph import Graph


def lenet5(seed: int = 0) -> Graph:
    """LeNet-5 (LeCun et al. 1998) on 32x32x1: 61,706 parameters."""
    b = GraphBuilder("lenet5", seed)
    x = b.input("input", (1, 32, 32, 1))
    x = b.conv(x, 6, 5, "conv1", activation="tanh", init="glorot")
    x = b.pool(x, "avg", 2, "pool1")
    x = b.conv(x, 16, 5, "conv2", activation="tanh", init="glorot")
    x = b.pool(x, "avg", 2, "pool2")
    x = b.act(x, "flatten", "flatten")
    x = b.dense(x, 120, "fc1", activation="tanh", init="glorot")
    x = b.dense(x, 84, "fc2", activation="tanh", init="glorot")
    x = b.dense(x, 10, "fc3", init="glorot")
    x = b.act(x, "softmax", "prob")
    return b.build(x)


def alexnet(seed: int = 0) -> Graph:
    """AlexNet (Krizhevsky et al. 2012), the two-group original on 227x227x3: ~61.0M parameters."""
    b = GraphBuilder("alexnet", seed)
    x = b.input("input", (1, 227, 227, 3))
    lrn = dict(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75)  # Caffe local_size 5, alpha 1e-4
    x = b.conv(x, 96, 11, "conv1", strides=4, activation="relu")
    x = b.act(x, "lrn", "norm1", **lrn)
    x = b.pool(x, "max", 3, "pool1", strides=2)
    x = b.conv(x, 256, 5, "conv2", padding="same", groups=2, activation="relu")
    x = b.act(x, "lrn", "norm2", **lrn)
    x = b.pool(x, "max", 3, "pool2", strides=2)
    x = b.conv(x, 384, 3, "conv3", padding="same", activation="relu")
    x = b.conv(x, 384, 3, "conv4", padding="same", groups=2, activation="relu")
    x = b.conv(x, 256, 3, "conv5", padding="same", groups=2, activation="relu")
    x = b.pool(x, "max", 3, "pool5", strides=2)
    x = b.act(x, "flatten", "flatten")
    x = b.dense(x, 4096, "fc6", activation="relu")
    x = b.act(x, "dropout", "drop6", rate=0.5)
    x = b.dense(x, 4096, "fc7", activation="relu")
    x = b.act(x, "dropout", "drop7", rate=0.5)
    x = b.dense(x, 1000, "fc8", init="glorot")
    x = b.act(x, "softmax", "prob")
    return b.build(x)


def vgg16(seed: int = 0) -> Graph:
    """VGG16 (Simonyan & Zisserman 2014), Keras naming, 224x224x3: 138,357,544 parameters."""
    b = GraphBuilder("vgg16", seed)
    x = b.input("input", (1, 224, 224, 3))
    for block, (filters, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, convs + 1):
            x = b.conv(x, filters, 3, f"block{block}_conv{i}", padding="same", activation="relu")
        x = b.pool(x, "max", 2, f"block{block}_pool")
    x = b.act(x, "flatten", "flatten")
    x = b.dense(x, 4096, "fc1", activation="relu")
    x = b.dense(x, 4096, "fc2", activation="relu")
    x = b.dense(x, 1000, "predictions", init="glorot")
    x = b.act(x, "softmax", "predictions_softmax")
    return b.build(x)


def resnet50(seed: int = 0) -> Graph:
    """ResNet50 v1 (He et al. 2015), Keras naming, 224x224x3: 25,636,712 parameters."""
    b = GraphBuilder("resnet50", seed)
    eps = 1.001e-5
    x = b.input("input", (1, 224, 224, 3))
    x = b.pad(x, [(3, 3), (3, 3)], "conv1_pad")
    x = b.conv(x, 64, 7, "conv1_conv", strides=2)
    x = b.batch_norm(x, "conv1_bn", eps)
    x = b.act(x, "relu", "conv1_relu")
    x = b.pad(x, [(1, 1), (1, 1)], "pool1_pad")
    x = b.pool(x, "max", 3, "pool1_pool", strides=2)

    def block(x, filters, stride, name, conv_shortcut):
        if conv_shortcut:
            shortcut = b.conv(x, 4 * filters, 1, f"{name}_0_conv", strides=stride, init="glorot")
            shortcut = b.batch_norm(shortcut, f"{name}_0_bn", eps)
        else:
            shortcut = x
        y = b.conv(x, filters, 1, f"{name}_1_conv", strides=stride)
        y = b.batch_norm(y, f"{name}_1_bn", eps)
        y = b.act(y, "relu", f"{name}_1_relu")
        y = b.conv(y, filters, 3, f"{name}_2_conv", padding="same")
        y = b.batch_norm(y, f"{name}_2_bn", eps)
        y = b.act(y, "relu", f"{name}_2_relu")
        y = b.conv(y, 4 * filters, 1, f"{name}_3_conv", init="glorot")
        # a small gamma on the residual branch keeps activations bounded through 16 additions
        y = b.batch_norm(y, f"{name}_3_bn", eps, gamma="gamma_small")
        y = b.add("add", [shortcut, y], f"{name}_add")
        return b.act(y, "relu", f"{name}_out")

    for stage, (filters, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=2):
        x = block(x, filters, stride, f"conv{stage}_block1", True)
        for i in range(2, blocks + 1):
            x = block(x, filters, 1, f"conv{stage}_block{i}", False)
    x = b.add("global_avg_pool", x, "avg_pool")
    x = b.dense(x, 1000, "predictions", init="glorot")
    x = b.act(x, "softmax", "predictions_softmax")
    return b.build(x)


def xception(seed: int = 0) -> Graph:
    """Xception (Chollet 2017), Keras naming, 299x299x3: 22,910,480 parameters."""
    b = GraphBuilder("xception", seed)
    x = b.input("input", (1, 299, 299, 3))
    x = b.conv(x, 32, 3, "block1_conv1", strides=2, use_bias=False)
    x = b.batch_norm(x, "block1_conv1_bn")
    x = b.act(x, "relu", "block1_conv1_act")
    x = b.conv(x, 64, 3, "block1_conv2", use_bias=False)
    x = b.batch_norm(x, "block1_conv2_bn")
    x = b.act(x, "relu", "block1_conv2_act")

    counter = {"conv": 0, "bn": 0, "add": 0}

    def keras_name(kind: str, base: str) -> str:
        n = counter[kind]
        counter[kind] += 1
        return base if n == 0 else f"{base}_{n}"

    def entry_block(x, block, filters, first_act):
        residual = b.conv(x, filters[1], 1, keras_name("conv", "conv2d"), strides=2, padding="same", use_bias=False, init="glorot")
        residual = b.batch_norm(residual, keras_name("bn", "batch_normalization"))
        if first_act:
            x = b.act(x, "relu", f"block{block}_sepconv1_act")
        x = b.separable(x, filters[0], 3, f"block{block}_sepconv1")
        x = b.batch_norm(x, f"block{block}_sepconv1_bn")
        x = b.act(x, "relu", f"block{block}_sepconv2_act")
        x = b.separable(x, filters[1], 3, f"block{block}_sepconv2")
        x = b.batch_norm(x, f"block{block}_sepconv2_bn", gamma="gamma_small")
        x = b.pool(x, "max", 3, f"block{block}_pool", strides=2, padding="same")
        return b.add("add", [x, residual], keras_name("add", "add"))

    x = entry_block(x, 2, (128, 128), first_act=False)
    x = entry_block(x, 3, (256, 256), first_act=True)
    x = entry_block(x, 4, (728, 728), first_act=True)
    for block in range(5, 13):
        residual = x
        for i in range(1, 4):
            x = b.act(x, "relu", f"block{block}_sepconv{i}_act")
            x = b.separable(x, 728, 3, f"block{block}_sepconv{i}")
            x = b.batch_norm(x, f"block{block}_sepconv{i}_bn", gamma="gamma_small" if i == 3 else "gamma")
        x = b.add("add", [x, residual], keras_name("add", "add"))
    x = entry_block(x, 13, (728, 1024), first_act=True)
    x = b.separable(x, 1536, 3, "block14_sepconv1")
    x = b.batch_norm(x, "block14_sepconv1_bn")
    x = b.act(x, "relu", "block14_sepconv1_act")
    x = b.separable(x, 2048, 3, "block14_sepconv2")
    x = b.batch_norm(x, "block14_sepconv2_bn")
    x = b.act(x, "relu", "block14_sepconv2_act")
    x = b.add("global_avg_pool", x, "avg_pool")
    x = b.dense(x, 1000, "predictions", init="glorot")
    x = b.act(x, "softmax", "predictions_softmax")
    return b.build(x)


def mobilenet_v1(seed: int = 0) -> Graph:
    """MobileNetV1 1.0/224 (Howard et al. 2017), Keras naming: 4,253,864 parameters."""
    b = GraphBuilder("mobilenet_v1", seed)
    x = b.input("input", (1, 224, 224, 3))
    x = b.conv(x, 32, 3, "conv1", strides=2, padding="same", use_bias=False)
    x = b.batch_norm(x, "conv1_bn")
    x = b.act(x, "relu6", "conv1_relu")
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (filters, stride) in enumerate(plan, start=1):
        if stride == 2:
            x = b.pad(x, [(0, 1), (0, 1)], f"conv_pad_{i}")
        x = b.depthwise(x, 3, f"conv_dw_{i}", strides=stride, padding="same" if stride == 1 else "valid")
        x = b.batch_norm(x, f"conv_dw_{i}_bn")
        x = b.act(x, "relu6", f"conv_dw_{i}_relu")
        x = b.conv(x, filters, 1, f"conv_pw_{i}", use_bias=False)
        x = b.batch_norm(x, f"conv_pw_{i}_bn")
        x = b.act(x, "relu6", f"conv_pw_{i}_relu")
    x = b.add("global_avg_pool", x, "global_average_pooling2d", {"keepdims": True})
    x = b.act(x, "dropout", "dropout", rate=1e-3)
    x = b.conv(x, 1000, 1, "conv_preds", padding="same", init="glorot")
    x = b.act(x, "flatten", "reshape_2")
    x = b.act(x, "softmax", "predictions")
    return b.build(x)


def c3d(seed: int = 0, classes: int = 101) -> Graph:
    """C3D (Tran et al. 2015) on 16x112x112x3 clips, UCF101 head: ~78.4M parameters."""
    b = GraphBuilder("c3d", seed)
    x = b.input("input", (1, 16, 112, 112, 3))
    x = b.conv(x, 64, 3, "conv1a", padding="same", activation="relu")
    x = b.pool(x, "max", (1, 2, 2), "pool1")
    x = b.conv(x, 128, 3, "conv2a", padding="same", activation="relu")
    x = b.pool(x, "max", 2, "pool2")
    for stage, filters in [(3, 256), (4, 512), (5, 512)]:
        x = b.conv(x, filters, 3, f"conv{stage}a", padding="same", activation="relu")
        x = b.conv(x, filters, 3, f"conv{stage}b", padding="same", activation="relu")
        # pool5 pads H and W (7 -> 4) as the original Caffe model, giving 4x4x512 = 8192 features
        x = b.pool(x, "max", 2, f"pool{stage}", padding="same" if stage == 5 else "valid")
    x = b.act(x, "flatten", "flatten")
    x = b.dense(x, 4096, "fc6", activation="relu")
    x = b.act(x, "dropout", "drop6", rate=0.5)
    x = b.dense(x, 4096, "fc7", activation="relu")
    x = b.act(x, "dropout", "drop7", rate=0.5)
    x = b.dense(x, classes, "fc8", init="glorot")
    x = b.act(x, "softmax", "prob")
    return b.build(x)


def _encoder_block(b: GraphBuilder, x: str, name: str, heads: int, mlp: int, epsilon: float) -> str:
    """A pre-norm transformer encoder block on (1, T, C), as torchvision's ViT EncoderBlock: LayerNorm,
    multi-head self-attention with a fused Q/K/V projection (split into heads by reshape, transpose and
    slices, as converters write it), residual add; LayerNorm, MLP (GELU), residual add. The attention
    is what partitioners.split_heads recognises (attn-heads), the MLP an fc-output -> fc-input pair."""
    _, t, c = b.shape(x)
    d = c // heads
    ln = b.add("layer_norm", x, f"{name}_ln_1", {"epsilon": epsilon}, {"gamma": ((c,), "gamma"), "beta": ((c,), "beta")})
    qkv = b.dense(ln, 3 * c, f"{name}_attention_in_proj", init="glorot")
    qkv = b.add("reshape", qkv, f"{name}_attention_heads", {"shape": [t, 3, heads, d]})
    qkv = b.add("transpose", qkv, f"{name}_attention_qkv_first", {"perm": [0, 2, 3, 1, 4]})  # (1, 3, H, T, D)
    q, k, v = (b.add("strided_slice", qkv, f"{name}_attention_{p}", {"starts": [i, 0, 0, 0], "steps": [1, 1, 1, 1],
                                                                       "counts": [1, heads, t, d], "out_shape": [heads, t, d]})
               for i, p in enumerate("qkv"))
    # (the 1/sqrt(d) scale of Q is taken as folded into the seeded Q weights: no parameter of its own)
    s = b.add("batch_matmul", [q, k], f"{name}_attention_scores", {"adj_y": True})
    p_ = b.act(s, "softmax", f"{name}_attention_softmax", axis=-1)
    o = b.add("batch_matmul", [p_, v], f"{name}_attention_context")
    o = b.add("transpose", o, f"{name}_attention_tokens_first", {"perm": [0, 2, 1, 3]})
    o = b.add("reshape", o, f"{name}_attention_merge", {"shape": [t, c]})
    o = b.dense(o, c, f"{name}_attention_out_proj", init="glorot")
    x = b.add("add", [x, o], f"{name}_add_1")
    h = b.add("layer_norm", x, f"{name}_ln_2", {"epsilon": epsilon}, {"gamma": ((c,), "gamma"), "beta": ((c,), "beta")})
    h = b.dense(h, mlp, f"{name}_mlp_1", init="glorot")
    h = b.act(h, "gelu", f"{name}_mlp_gelu")
    h = b.dense(h, c, f"{name}_mlp_2", init="glorot")
    return b.add("add", [x, h], f"{name}_add_2")


def _transformer_head(b: GraphBuilder, x: str, depth: int, heads: int, mlp: int, classes: int, epsilon: float) -> str:
    """Class token, position embedding, `depth` encoder blocks, final LayerNorm, the class token's row, the head."""
    _, t, c = b.shape(x)
    token = b.add("constant", [], "class_token", {}, {"value": ((1, 1, c), "bias")})
    x = b.add("concat", [token, x], "tokens", {"axis": 1})
    x = b.add("add", x, "pos_embedding", {}, {"constant": ((1, t + 1, c), "bias")})
    for i in range(depth):
        x = _encoder_block(b, x, f"encoder_layer_{i}", heads, mlp, epsilon)
    x = b.add("layer_norm", x, "encoder_ln", {"epsilon": epsilon}, {"gamma": ((c,), "gamma"), "beta": ((c,), "beta")})
    x = b.add("strided_slice", x, "class_token_out", {"starts": [0, 0], "steps": [1, 1], "counts": [1, c], "out_shape": [c]})
    return b.dense(x, classes, "head", init="glorot")


def vit_b16(seed: int = 0) -> Graph:
    """ViT-B/16 (Dosovitskiy et al. 2021) on 224x224x3, torchvision's layout: 16x16 patches by a stride-16
    conv, class token, 12 pre-norm blocks of 12 heads (768 wide, MLP 3072, GELU): 86,567,656 parameters."""
    b = GraphBuilder("vit_b16", seed)
    x = b.input("input", (1, 224, 224, 3))
    x = b.conv(x, 768, 16, "conv_proj", strides=16, init="glorot")
    x = b.add("reshape", x, "patches", {"shape": [196, 768]})
    x = _transformer_head(b, x, 12, 12, 3072, 1000, 1e-6)
    return b.build(b.act(x, "softmax", "prob"))


def kwt3(seed: int = 0, classes: int = 35) -> Graph:
    """Keyword Transformer KWT-3 (Berg et al. 2021) on 98 MFCC frames of 40 coefficients (Speech Commands
    v2, 35 words): each frame projected to 192, class token, 12 pre-norm blocks of 3 heads (MLP 768,
    GELU). The paper gives 5.361M parameters; this build has 5,372,579 (its position embedding covers 99
    tokens and the head 35 classes; the paper's exact input framing is not spelt out)."""
    b = GraphBuilder("kwt3", seed)
    x = b.input("mfcc", (1, 98, 40))
    x = b.dense(x, 192, "patch_projection", init="glorot")
    x = _transformer_head(b, x, 12, 3, 768, classes, 1e-6)
    return b.build(b.act(x, "softmax", "prob"))


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: builder and a line about it."""

    build: Callable[..., Graph]
    description: str


ZOO: dict[str, ZooEntry] = {
    "lenet5": ZooEntry(lenet5, "LeNet-5, 32x32 grey digits"),
    "alexnet": ZooEntry(alexnet, "AlexNet, two-group original"),
    "vgg16": ZooEntry(vgg16, "VGG16, Keras names"),
    "resnet50": ZooEntry(resnet50, "ResNet50 v1, Keras names"),
    "xception": ZooEntry(xception, "Xception, Keras names"),
    "mobilenet_v1": ZooEntry(mobilenet_v1, "MobileNetV1 1.0/224, Keras names"),
    "c3d": ZooEntry(c3d, "C3D video clips, UCF101 head"),
    "vit_b16": ZooEntry(vit_b16, "ViT-B/16 vision transformer, torchvision layout"),
    "kwt3": ZooEntry(kwt3, "Keyword Transformer KWT-3, 98x40 MFCC, 35 words"),
}

ALIASES = {"lenet": "lenet5", "lenet-5": "lenet5", "mobilenet": "mobilenet_v1", "mobilenetv1": "mobilenet_v1",
           "mobilenet-v1": "mobilenet_v1", "resnet-50": "resnet50", "vgg-16": "vgg16", "vit": "vit_b16", "vit-b/16": "vit_b16",
           "vit_b_16": "vit_b16", "kwt": "kwt3", "kwt-3": "kwt3"}


def zoo_model(name: str, seed: int = 0) -> Graph:
    """Build a zoo model by (case-insensitive) name; raises PisplitError listing the zoo."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ZOO:
        raise PisplitError(f"model {name!r}: not in the zoo ({', '.join(ZOO)})")
    return ZOO[key].build(seed=seed)
