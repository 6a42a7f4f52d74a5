"""`pisplit codecs --chart FILE`: the codec table as a picture (the paper's Figure 4(b)/5(b)): per cut,
each codec's compression ratio (log scale) over the cut's entropy and non-zero share."""
from __future__ import annotations

from pathlib import Path

from partitioners.link_pricing import CodecTable

from .charts import _figure_class, _save, check_chart_path


def codec_chart(table: CodecTable, path: str | Path) -> Path:
    """Draw `table` into `path` (.svg, .png or .html, as cluster.charts); returns the path."""
    path = check_chart_path(path)
    figure = _figure_class()
    fig = figure(figsize=(max(8.0, 0.45 * len(table.cuts) + 3), 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    x = list(range(len(table.cuts)))
    names = list(dict.fromkeys(s.codec for c in table.cuts for s in c.samples))
    for name in names:
        ys = [next((c.raw_bytes / s.encoded_bytes for s in c.samples if s.codec == name), float("nan")) for c in table.cuts]
        top.plot(x, ys, marker="o", markersize=3, label=name)
    top.set_yscale("log")
    top.set_ylabel("compression ratio (raw / message)")
    top.axhline(1.0, color="#888", linewidth=0.8)
    top.legend(fontsize=7, ncol=4)
    top.set_title(f"{table.model}: link codecs per cut ({table.n_frames} frames: {table.frames})", fontsize=9)
    bottom.bar(x, [c.entropy_bits for c in table.cuts], color="#9ecae1", label="entropy (bits/value, 256 levels)")
    twin = bottom.twinx()
    twin.plot(x, [c.nonzero for c in table.cuts], color="#fd8d3c", marker=".", label="non-zero share")
    twin.set_ylim(0, 1.05)
    bottom.set_ylabel("bits")
    twin.set_ylabel("non-zero")
    bottom.legend(fontsize=7, loc="lower left")
    twin.legend(fontsize=7, loc="lower right")
    bottom.set_xticks(x, [c.name for c in table.cuts], rotation=70, fontsize=7)
    fig.tight_layout()
    head = ("after", "raw bytes", "entropy", "non-zero", *names)
    rows = [(c.name, c.raw_bytes, f"{c.entropy_bits:.2f}", f"{c.nonzero:.2f}",
             *[next((f"{c.raw_bytes / s.encoded_bytes:.2f}" for s in c.samples if s.codec == n), "-") for n in names])
            for c in table.cuts]
    return _save(fig, path, f"{table.model}: link codecs per cut", (head, rows), [f"frames: {table.frames}"])
