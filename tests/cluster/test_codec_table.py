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
