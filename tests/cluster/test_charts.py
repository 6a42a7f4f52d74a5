"""`pisplit plan --chart` and `pisplit emulate --chart`: real SVG / PNG / HTML files that name the
stages, devices and layers; one-line errors for a bad file name and for a missing matplotlib, which
only --chart imports."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from layers import zoo_model
from cluster.report import predicted_schedule, steady_throughput
from partitioners.plan import Plan
from tests.conftest import ROOT, run_pisplit

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(svg: str) -> list[str]:
    """Every <text> of an SVG document (parsed as XML, so a broken file fails here), joined per element."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [" ".join("".join(t.itertext()).split()) for t in root.iter(f"{SVG}text")]


def has(texts: list[str], wanted: str) -> bool:
    return any(wanted in t for t in texts)


class _Cells(HTMLParser):
    """The text of every <td> and <th>, and the inline <svg> element's source span."""

    def __init__(self):
        super().__init__()
        self.cells, self.inside, self.svg_at = [], False, None

    def handle_starttag(self, tag, attrs):
        self.inside = tag in ("td", "th")
        if tag == "svg" and self.svg_at is None:
            self.svg_at = self.getpos()

    def handle_data(self, data):
        if self.inside:
            self.cells.append(data)

    def handle_endtag(self, tag):
        self.inside = False


def plan_with_chart(tmp_path, suffix: str, *args) -> tuple[Plan, object]:
    chart = tmp_path / f"plan{suffix}"
    proc = run_pisplit("plan", *args, "--output", tmp_path / "plan.json", "--chart", chart)
    assert f"wrote the chart {chart}" in proc.stdout
    return Plan.load(tmp_path / "plan.json"), chart


def test_plan_chart_svg_names_every_stage_device_layer_and_kept_layout(tmp_path):
    plan, chart = plan_with_chart(tmp_path, ".svg", "alexnet", "--devices", "rpi3:4", "--objective", "latency")
    texts = svg_texts(chart.read_text())
    graph = zoo_model("alexnet")
    split = [s for s in plan.stages if s.mode == "split"]
    assert split, "the latency plan of alexnet on 4 rpi3 splits a stage (the chart must show its kinds)"
    for stage in plan.stages:
        assert has(texts, f"stage {stage.index}")
        assert has(texts, graph.nodes[stage.node_start].name) and has(texts, graph.nodes[stage.node_stop - 1].name)
        for g in stage.segments:
            if g.kind != "none":
                assert has(texts, g.kind), g.kind
    for d in plan.devices:
        assert has(texts, f"rank {d.rank} · {d.kind}")
    kept = [g for s in split for g in s.segments if g.output_layout == "parts"]
    assert kept and has(texts, "output kept on the parts") and has(texts, "→ rows")  # conv-spatial strips kept as rows
    assert has(texts, f"{plan.predicted_throughput_fps:.2f} frames/s")
    assert has(texts, "predicted memory per device against its limit") and has(texts, "/ 1.0 GiB")
    page = tmp_path / "plan.html"
    run_pisplit("plan", "alexnet", "--devices", "rpi3:4", "--objective", "latency", "--chart", page)
    assert "stage 0 keeps pool1 (conv-spatial) on its parts: rows[0:" in page.read_text()  # the layouts, as `plan` prints them


def test_plan_chart_of_a_pipeline_shows_the_link_and_the_results_going_back(tmp_path):
    plan, chart = plan_with_chart(tmp_path, ".svg", "alexnet", "--devices", "rpi3:3", "--link", "94mbit")
    assert len(plan.stages) >= 2
    texts = svg_texts(chart.read_text())
    assert has(texts, "link 94 Mbit/s") and has(texts, "results back to rank 0") and has(texts, "/frame")
    assert all(has(texts, f"stage {s.index}: {s.mode}") for s in plan.stages)


def test_plan_chart_png_and_html(tmp_path):
    plan, png = plan_with_chart(tmp_path, ".png", "lenet5", "--devices", "rpi3:2")
    from matplotlib.image import imread

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 500 and pixels.std() > 0.05
    plan, page = plan_with_chart(tmp_path, ".html", "lenet5", "--devices", "rpi3:2")
    text = page.read_text()
    cells = _Cells()
    cells.feed(text)
    assert cells.svg_at is not None and "<table>" in text
    assert "stage 0" in cells.cells and any("rank 0 · rpi3" in c for c in cells.cells)
    svg = text[text.index("<svg"): text.index("</svg>") + len("</svg>")]
    assert has(svg_texts(svg), "stage 0")


def test_chart_errors_are_one_line(tmp_path):
    proc = run_pisplit("plan", "lenet5", "--devices", "rpi3:2", "--chart", tmp_path / "plan.gif", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--chart" in proc.stderr and "unknown format '.gif'" in proc.stderr and ".svg" in proc.stderr
    proc = run_pisplit("plan", "lenet5", "--devices", "rpi3:2", "--chart", tmp_path / "no" / "plan.svg", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # as on a Pi without the charts extra: importing it raises ImportError
from cluster.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_matplotlib(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_without_matplotlib_chart_says_what_to_install_and_the_rest_works(tmp_path):
    for command in (["plan", "lenet5", "--devices", "rpi3:2"], ["emulate", "lenet5", "--devices", "rpi3:2"]):
        proc = without_matplotlib(*command, "--chart", tmp_path / "c.svg")
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == "pisplit: error: --chart: matplotlib is not installed (pip install 'pisplit[charts]')\n"
        assert not (tmp_path / "c.svg").exists()
    proc = without_matplotlib("plan", "lenet5", "--devices", "rpi3:2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"] == "pisplit-plan"


PROBE = """
import contextlib, io, json, sys
from cluster.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ("matplotlib", "cluster"))))
"""


def test_only_chart_imports_matplotlib(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, "plan", "lenet5", "--devices", "rpi3:2", "--json"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "cluster.charts" not in loaded and not any(m.startswith("matplotlib") for m in loaded)
    proc = subprocess.run([sys.executable, "-c", PROBE, "plan", "lenet5", "--devices", "rpi3:2", "--chart", tmp_path / "c.svg"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib" in json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.mpi
def test_emulate_chart_shows_measured_against_predicted_and_throughput_over_time(tmp_path):
    chart = tmp_path / "run.svg"
    proc = run_pisplit("emulate", "lenet5", "--devices", "rpi3:2", "--frames", 16, "--single-frames", 4, "--chart", chart,
                       "--plan-output", tmp_path / "plan.json", "--json")
    doc = json.loads(proc.stdout)
    assert doc["chart_file"] == str(chart)
    plan = Plan.load(tmp_path / "plan.json")
    texts = svg_texts(chart.read_text())
    for stage in plan.stages:
        assert has(texts, f"stage {stage.index} ({stage.mode})")
    for d in plan.devices:
        assert has(texts, f"rank {d.rank} · {d.kind}")
    assert has(texts, "measured against predicted, per stage") and has(texts, "frames completed")
    predicted = steady_throughput(predicted_schedule(plan, 16).done_s)  # fitted as the measured rate is
    assert predicted == pytest.approx(plan.predicted_throughput_fps, rel=0.1)
    assert has(texts, f"measured: {doc['throughput_fps']:.2f} frames/s") and has(texts, f"predicted: {predicted:.2f} frames/s")
    assert has(texts, "memory per rank")
