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
