"""cluster.codec_table: codec tables measured on sample frames; accuracy loss on a held-out split."""
from __future__ import annotations

import numpy as np
import pytest


def test_codec_tables_measure_accuracy_on_the_held_out_split():
    from cluster.codec_table import measure_codec_table
    from layers import load_model
    from layers.trained import held_out, trained_names
    from partitioners.codecs import decode, encode

    if "branchy_lenet_mnist" not in trained_names():
        pytest.skip("no trained branchy_lenet_mnist")
    g = load_model("branchy_lenet_mnist")
    cut = 2
    table = measure_codec_table(g, "branchy_lenet_mnist", ("zstd", "jpeg:5"), n_frames=1, accuracy_frames=40, cuts=[cut])
    (entry,) = table.cuts
    assert table.frames.startswith("held-out test split") and entry.cut == cut and entry.raw_bytes == g.cut_bytes(cut)
    zstd, jpeg = entry.samples
    assert zstd.lossless and zstd.accuracy_loss is None and zstd.max_rel_error == 0
    assert not jpeg.lossless and jpeg.accuracy_loss is not None and jpeg.max_rel_error > 0
    feeds, labels = held_out("branchy_lenet_mnist")
    feeds = {t: x[:40] for t, x in feeds.items()}
    final = g.outputs[-1]
    exact = np.mean(g.execute(feeds)[final].reshape(40, -1).argmax(1) == labels[:40])
    live = g.execute(feeds, 0, cut)
    coded = {t: np.concatenate([decode(encode(x[i:i + 1], "jpeg:5")) for i in range(40)]) for t, x in live.items()}
    lossy = np.mean(g.execute(coded, cut)[final].reshape(40, -1).argmax(1) == labels[:40])
    assert jpeg.accuracy_loss == pytest.approx(exact - lossy)


def test_a_cut_of_two_tensors_is_measured_per_tensor_too():
    from cluster.codec_table import check_table, measure_codec_table, sample_frames
    from layers.builder import GraphBuilder
    from partitioners.codecs import encode

    b = GraphBuilder("skip4", 3)  # 4 input channels: seeded random frames (photographs take seconds to load)
    x = b.input("input", (1, 12, 10, 4))
    a = b.conv(x, 8, 3, "conv_a", padding="same", activation="relu")
    c = b.conv(a, 8, 3, "conv_b", padding="same", activation="relu")
    y = b.add("add", [a, c], "join")
    g = b.build(b.dense(b.act(y, "flatten", "flatten"), 5, "fc"))
    table = measure_codec_table(g, "skip", ("zstd", "int8"), n_frames=2, cuts=[1, 2], machine_speed=1.25)
    assert table.machine_speed == 1.25 and check_table(table, g) is table
    one, two = table.cuts
    assert one.tensors == ()  # one tensor: the cut's own samples say it all
    assert [t.name for t in two.tensors] == list(g.cut_tensors(2)) and two.messages == 2
    for name in ("zstd", "int8"):
        whole = next(s for s in two.samples if s.codec == name)
        parts = [next(s for s in t.samples if s.codec == name) for t in two.tensors]
        assert sum(p.encoded_bytes for p in parts) == pytest.approx(whole.encoded_bytes)
        assert max(p.max_rel_error for p in parts) == pytest.approx(whole.max_rel_error)
    # the bytes are those of real messages of the sample frames
    frames, _, _ = sample_frames(g, "skip", 2)
    envs = [g.execute(feeds, 0, 2) for feeds in frames]
    for i, t in enumerate(g.cut_tensors(2)):
        zstd = next(s for s in two.tensors[i].samples if s.codec == "zstd")
        assert zstd.encoded_bytes == pytest.approx(np.mean([len(encode(env[t], "zstd")) for env in envs]))


def test_lossy_links_are_checked_together_on_the_held_out_split():
    from cluster.codec_table import plan_accuracy
    from cluster.commands.codecs import accuracy_checked, lossy_links, with_budget
    from layers import load_model
    from layers.trained import held_out, trained_names
    from partitioners.codecs import decode, encode
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.link_pricing import CodecSample, CodecTable, CutCodecs, LossBudget
    from partitioners.planners import make_plan

    name = "branchy_lenet_mnist"
    if name not in trained_names():
        pytest.skip(f"no trained {name}")
    g = load_model(name)
    # a table that claims jpeg:1 loses nothing at any cut: planned alone it looks free; together it is not
    cuts = tuple(CutCodecs(c, g.nodes[c - 1].name if c else "input", g.cut_bytes(c), len(g.cut_tensors(c)),
                           (CodecSample("jpeg:1", g.cut_bytes(c) / 50, 1e-6, 1e-6, 0.5, False, 0.0),
                            CodecSample("zstd", g.cut_bytes(c) / 2, 1e-6, 1e-6))) for c in range(len(g)))
    table = CodecTable(g.name, len(g), "hand-made", 1, "host", cuts)
    budget = LossBudget(max_accuracy_loss=0.01)
    model = CostModel(g, make_cluster(parse_devices("rpi3:2@300.25M"), 1e5, 0.0), codecs=table, codec_budget=budget)
    plan = make_plan(g, model, "dp", "throughput", name, "numpy")
    assert lossy_links(plan) == ["jpeg:1"]
    cut = plan.stages[0].node_stop
    exact, coded, n = plan_accuracy(g, name, plan, 50)
    feeds, labels = held_out(name)
    env = g.execute({t: x[:50] for t, x in feeds.items()}, 0, cut)
    env = {t: np.concatenate([decode(encode(x[i:i + 1], "jpeg:1")) for i in range(50)]) for t, x in env.items()}
    by_hand = np.mean(g.execute(env, cut)[g.outputs[-1]].reshape(50, -1).argmax(1) == labels[:50])
    assert n == 50 and coded == pytest.approx(by_hand) and exact - coded > 0.01
    checked = accuracy_checked(lambda b: make_plan(g, with_budget(model, b), "dp", "throughput", name, "numpy"), g, name, budget,
                               frames=50, plan=plan)
    assert lossy_links(checked) == [] and checked.stages[0].send_codec == "zstd"
    assert "lossless links: lossy ones lost more top-1 than 1% together (jpeg:1: +" in checked.notes[-1]
    generous = accuracy_checked(lambda b: make_plan(g, with_budget(model, b), "dp", "throughput", name, "numpy"), g, name,
                                LossBudget(max_accuracy_loss=0.5), frames=50, plan=plan)
    assert lossy_links(generous) == ["jpeg:1"] and "checked together on 50 held-out frames" in generous.notes[-1]
