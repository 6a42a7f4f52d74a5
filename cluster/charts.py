"""Charts of a plan and of a run, for people who would rather look than read (`--chart FILE`).

`plan_chart`: the cluster as devices and links by stage, each stage's layers with its split kinds
and where each segment's output lives, and per stage the predicted compute and communication and
per device the predicted memory against its limit. `run_chart`: measured against predicted per
stage, frames completed over time, and memory per rank.

matplotlib is an optional extra (`pip install 'pisplit[charts]'`): nothing imports this module
unless a chart is asked for, and a Pi running ranks never needs it. The format follows the file's
suffix: .svg (text kept as text, so stage and device names can be searched), .png, or .html (the
SVG inline with the same figures as a table, one self-contained file).
"""
from __future__ import annotations

import html
import io
import math
from collections import Counter
from pathlib import Path

from layers.errors import PisplitError
from partitioners.plan import SEGMENT_KINDS, Plan
from partitioners.vocabulary import NO_SPLIT, StageMode

from .output import human_bytes
from .runtime import entry_rank

CHART_FORMATS = (".svg", ".png", ".html")
INSTALL_HINT = "pip install 'pisplit[charts]'"
PREDICTED, COMPUTE, COMM, WAIT = "#9ecae1", "#3182bd", "#fd8d3c", "#d9d9d9"


def check_chart_path(path: str | Path) -> Path:
    """The chart file `path` as a Path, once its format is known and matplotlib is importable;
    raises PisplitError naming the file or the missing extra (checked before a long run, not after)."""
    path = Path(path)
    if path.suffix.lower() not in CHART_FORMATS:
        raise PisplitError(f"--chart {path}: unknown format {path.suffix or '(no suffix)'!r} "
                           f"(expected one of {', '.join(CHART_FORMATS)})")
    if not path.parent.is_dir():
        raise PisplitError(f"--chart {path}: folder {path.parent} does not exist")
    _figure_class()
    return path


def _figure_class():
    """matplotlib's Figure (no pyplot: no GUI backend, no global figure state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PisplitError(f"--chart: matplotlib is not installed ({INSTALL_HINT})") from None
    return Figure


def _kind_colours() -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {kind: ("#bdbdbd" if kind == NO_SPLIT else cmap(i % 10)) for i, kind in enumerate(SEGMENT_KINDS)}


# --- the plan --------------------------------------------------------------------------------------
def plan_chart(plan: Plan, graph, path: str | Path) -> Path:
    """Draw `plan` (for `graph`, whose node names label the layers) into `path` (.svg, .png, .html)."""
    path = check_chart_path(path)
    fig = _figure_class()(figsize=(15, 13), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1.25, 0.9, 1.0])
    _draw_cluster(fig.add_subplot(grid[0, :]), plan)
    _draw_layers(fig.add_subplot(grid[1, :]), plan, graph)
    _draw_stage_times(fig.add_subplot(grid[2, 0]), plan)
    _draw_memory(fig.add_subplot(grid[2, 1]), plan)
    fig.suptitle(_plan_title(plan), fontsize=13)
    rows = [[f"stage {s.index}", _ranks_text(plan, s), _nodes_text(graph, s), _mode_text(s),
             f"{s.predicted.compute_s * 1e3:.1f}" if s.predicted else "-",
             f"{s.predicted.comm_s * 1e3:.1f}" if s.predicted else "-", _memory_text(plan, s)] for s in plan.stages]
    table = (["stage", "ranks", "layers", "split kinds and layouts", "compute ms", "comm ms", "memory / limit"], rows)
    kept = [f"stage {st.index} keeps {graph.nodes[g.node_stop - 1].name} ({g.kind}) on its parts: {_kept_layout(graph, g)}"
            for st in plan.stages for g in st.segments if g.output_layout == "parts"]
    return _save(fig, path, _plan_title(plan), table, kept + list(plan.notes))


def _plan_title(plan: Plan) -> str:
    return (f"{plan.model}: {plan.planner} plan for {plan.objective} on {plan.n_ranks} device{'s' if plan.n_ranks > 1 else ''}, "
            f"link {plan.link_bandwidth_bps / 1e6:g} Mbit/s · predicted {plan.predicted_throughput_fps:.2f} frames/s, "
            f"latency {plan.predicted_latency_s * 1e3:.1f} ms")


def _device_label(plan: Plan, rank: int) -> str:
    d = plan.devices[rank]
    return f"rank {rank} · {d.kind}" + (f" · {d.host}" if d.host else "")


def _ranks_text(plan: Plan, stage) -> str:
    return ", ".join(_device_label(plan, r) for r in stage.ranks)


def _nodes_text(graph, stage) -> str:
    return f"[{stage.node_start}, {stage.node_stop}) {graph.nodes[stage.node_start].name} .. {graph.nodes[stage.node_stop - 1].name}"


def _mode_text(stage) -> str:
    if stage.mode != StageMode.SPLIT:
        return stage.mode + (f" x{len(stage.ranks)}" if stage.mode == StageMode.DATA_PARALLEL else "")
    counts = Counter((g.kind, g.output_layout) for g in stage.segments if g.kind != NO_SPLIT)
    return "split: " + ", ".join(f"{k}{' (kept on parts)' if lay == 'parts' else ''}{f' x{n}' if n > 1 else ''}"
                                 for (k, lay), n in counts.items())


def _memory_text(plan: Plan, stage) -> str:
    if not stage.predicted:
        return "-"
    return ", ".join(f"{human_bytes(stage.predicted.memory_bytes.get(r, 0))} / {human_bytes(plan.devices[r].memory_bytes)}"
                     for r in stage.ranks)


def _transfer_ms(plan: Plan, nbytes: int) -> float:
    return (nbytes * 8.0 / plan.link_bandwidth_bps + plan.link_latency_s) * 1e3 if nbytes else 0.0


def _draw_cluster(ax, plan: Plan) -> None:
    """Devices as boxes in one column per stage; arrows for the frames between stages and the
    results back to rank 0, labelled with bytes per frame and their time on the plan's link."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    colours = _kind_colours()
    width, height, gap_x, gap_y = 2.3, 0.8, 3.6, 1.05
    centre = {}
    tallest = max(len(s.ranks) for s in plan.stages)
    for s in plan.stages:
        x = s.index * gap_x
        top = (tallest - len(s.ranks)) * gap_y / 2
        for j, r in enumerate(s.ranks):
            y = -(top + j * gap_y)
            centre[r] = (x, y)
            d = plan.devices[r]
            role = " · lead" if s.mode == StageMode.SPLIT and j == 0 else (" · replica" if s.mode == StageMode.DATA_PARALLEL else "")
            memory = s.predicted.memory_bytes.get(r, 0) if s.predicted else None
            edge = "#cb181d" if memory is not None and memory > d.memory_bytes else "#252525"
            ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.04",
                                        facecolor="#f7fbff", edgecolor=edge, linewidth=1.4))
            ax.text(x, y + 0.14, f"rank {r} · {d.kind}{role}", ha="center", va="center", fontsize=9, weight="bold")
            sub = (f"{d.host} · " if d.host else "") + f"{human_bytes(d.memory_bytes)}"
            if d.speed != 1.0:
                sub += f" · speed x{d.speed:g}"
            ax.text(x, y - 0.17, sub, ha="center", va="center", fontsize=8, color="#525252")
        kinds = [g.kind for g in s.segments if g.kind != NO_SPLIT]
        head = f"stage {s.index}: {s.mode}" + (f" ({len(set(kinds))} kinds)" if kinds else "")
        ax.text(x, height, head, ha="center", va="bottom", fontsize=10, weight="bold",
                color=colours[kinds[0]] if kinds else "#252525")
        if s.mode == StageMode.SPLIT:  # the lead scatters to and gathers from its parts; kept outputs go peer to peer
            lead = centre[s.ranks[0]]
            for r in s.ranks[1:]:
                ax.add_patch(FancyArrowPatch((lead[0] - width / 2, lead[1]), (centre[r][0] - width / 2, centre[r][1]),
                                             connectionstyle="arc3,rad=0.45", arrowstyle="<->", mutation_scale=9,
                                             linestyle="--", color="#6a51a3"))
    for s, nxt in zip(plan.stages, plan.stages[1:]):
        # the rank pairs frames take: replicas deal frames round-robin, so the pattern repeats every lcm frames
        pairs = sorted({(entry_rank(s, f), entry_rank(nxt, f)) for f in range(math.lcm(len(s.ranks), len(nxt.ranks)))})
        for a, b in pairs:
            ax.add_patch(FancyArrowPatch((centre[a][0] + width / 2, centre[a][1]), (centre[b][0] - width / 2, centre[b][1]),
                                         arrowstyle="-|>", mutation_scale=12, color="#252525", shrinkA=2, shrinkB=2))
        x = (s.index + 0.5) * gap_x
        ax.text(x, height * 0.55, f"{human_bytes(s.send_bytes)}/frame\n{_transfer_ms(plan, s.send_bytes):.1f} ms",
                ha="center", va="bottom", fontsize=8)
    ys = [y for _, y in centre.values()]
    last = plan.stages[-1]
    if last.index > 0 and (last.ranks[0] != 0 or last.mode == StageMode.DATA_PARALLEL):
        low = min(ys) - height
        ax.add_patch(FancyArrowPatch((last.index * gap_x, centre[last.ranks[-1]][1] - height / 2), (0, low),
                                     connectionstyle="angle,angleA=-90,angleB=180,rad=8", arrowstyle="-|>",
                                     mutation_scale=12, color="#737373"))
        ax.text(last.index * gap_x / 2, low - 0.08, "results back to rank 0", ha="center", va="top", fontsize=8, color="#737373")
    span = max(len(plan.stages) - 1, 2) * gap_x + gap_x * 1.1  # boxes keep their shape with few stages
    middle = (len(plan.stages) - 1) * gap_x / 2
    ax.set_xlim(middle - span / 2, middle + span / 2)
    ax.text(middle - span / 2, height, f"link {plan.link_bandwidth_bps / 1e6:g} Mbit/s"
            + (f"\n+{plan.link_latency_s * 1e3:g} ms/msg" if plan.link_latency_s else ""), ha="left", va="bottom", fontsize=8)
    ax.set_ylim(min(ys) - height * 1.9, max(ys) + height * 1.8)
    ax.set_aspect("auto")
    ax.axis("off")
    ax.set_title("cluster: devices by stage, frames between stages (bytes and time per frame on the link)", fontsize=10)


def _draw_layers(ax, plan: Plan, graph) -> None:
    """One row per stage over the model's nodes: each segment coloured by split kind, hatched where
    its output stays on the parts (layout 'parts', named: rows, channels, tiles)."""
    from matplotlib.patches import Patch, Rectangle

    colours = _kind_colours()
    used = set()
    for s in plan.stages:
        segments = s.segments or [None]
        for g in segments:
            start, stop = (g.node_start, g.node_stop) if g else (s.node_start, s.node_stop)
            kind = g.kind if g else ("none" if s.mode == StageMode.SINGLE else s.mode)
            colour = colours.get(kind, "#74c476")
            kept = g is not None and g.output_layout == "parts"
            ax.add_patch(Rectangle((start, s.index - 0.38), stop - start, 0.76, facecolor=colour, edgecolor="white",
                                   hatch="//" if kept else None, linewidth=0.8))
            used.add((kind, colour))
            label = kind if kind != NO_SPLIT else ""
            if kept:
                label += " → " + _kept_axis(graph, g)
            if label and (stop - start) / plan.n_nodes > 0.07:
                ax.text((start + stop) / 2, s.index, label, ha="center", va="center", fontsize=7.5)
        ax.text(s.node_stop, s.index, f" {graph.nodes[s.node_stop - 1].name}", ha="left", va="center", fontsize=7.5, color="#525252")
        ax.text(s.node_start, s.index + 0.42, f"{graph.nodes[s.node_start].name}", ha="left", va="bottom", fontsize=7.5,
                color="#525252")
    ax.set_xlim(0, plan.n_nodes * 1.12)
    ax.set_ylim(len(plan.stages) - 0.4, -0.6)
    ax.set_yticks(range(len(plan.stages)), [f"stage {s.index}" for s in plan.stages])
    if plan.n_nodes <= 48:  # every layer by name while they fit
        ax.set_xticks([i + 0.5 for i in range(plan.n_nodes)], [n.name for n in graph.nodes], rotation=90, fontsize=7)
        ax.set_xlabel("layers")
    else:
        ax.set_xlabel(f"node (layer) index, 0 .. {plan.n_nodes - 1}")
    handles = [Patch(facecolor=c, label=k if k != NO_SPLIT else "unsplit (lead)") for k, c in sorted(used, key=lambda kc: kc[0])]
    handles.append(Patch(facecolor="white", edgecolor="#525252", hatch="//", label="output kept on the parts"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7.5)
    ax.set_title("layers of each stage: split kinds and where each segment's output lives", fontsize=10)


def _kept_layout(graph, segment) -> str:
    """Where a kept segment output's pieces live, as `pisplit plan` prints it ('rows[0:7|7:14]@0,1')."""
    from partitioners.layouts import produced
    from partitioners.splits import split_segment

    try:
        split = split_segment(graph, segment.node_start, segment.node_stop, segment.kind, segment.sizes, segment.options)
        return produced(split, segment.ranks).describe()
    except PisplitError:
        return "parts"


def _kept_axis(graph, segment) -> str:
    """'rows', 'channels', 'tiles' ... : the axis a kept segment output is cut along."""
    return _kept_layout(graph, segment).split("[")[0].split("@")[0]


def _draw_stage_times(ax, plan: Plan) -> None:
    """Predicted compute and communication per frame, stage by stage, with the plan's period."""
    names = [f"stage {s.index}" for s in plan.stages]
    compute = [s.predicted.compute_s * 1e3 if s.predicted else 0.0 for s in plan.stages]
    comm = [s.predicted.comm_s * 1e3 if s.predicted else 0.0 for s in plan.stages]
    y = range(len(names))
    ax.barh(y, compute, color=COMPUTE, label="compute")
    ax.barh(y, comm, left=compute, color=COMM, label="communication")
    if plan.predicted_throughput_fps:
        period = 1e3 / plan.predicted_throughput_fps
        ax.axvline(period, color="#cb181d", linestyle="--", linewidth=1,
                   label=f"period {period:.1f} ms ({plan.predicted_throughput_fps:.2f} frames/s)")
    for i, s in enumerate(plan.stages):
        if s.mode == StageMode.DATA_PARALLEL:
            ax.text(compute[i] + comm[i], i, f"  per replica, x{len(s.ranks)} take turns", va="center", fontsize=7.5)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("predicted ms per frame")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("predicted time per stage", fontsize=10)


def _draw_memory(ax, plan: Plan) -> None:
    """Predicted memory of every device as a share of its memory, labelled in bytes."""
    ranks = [r for s in plan.stages for r in s.ranks]
    shares, labels = [], []
    for r in ranks:
        s = plan.stage_of_rank(r)
        used = s.predicted.memory_bytes.get(r, 0) if s.predicted else 0
        limit = plan.devices[r].memory_bytes
        shares.append(100.0 * used / limit if limit else 0.0)
        labels.append(f"  {human_bytes(used)} / {human_bytes(limit)}")
    y = range(len(ranks))
    colours = ["#cb181d" if v > 100 else PREDICTED for v in shares]
    ax.barh(y, shares, color=colours)
    ax.axvline(100, color="#252525", linewidth=1)
    for i, (v, text) in enumerate(zip(shares, labels)):
        ax.text(v, i, text, va="center", fontsize=7.5)
    ax.set_yticks(list(y), [_device_label(plan, r) + f" (stage {plan.stage_of_rank(r).index})" for r in ranks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(115.0, max(shares, default=0) * 1.3))
    ax.set_xlabel("predicted memory, % of the device's (100% = its limit)")
    ax.set_title("predicted memory per device against its limit", fontsize=10)


# --- a run -----------------------------------------------------------------------------------------
def run_chart(plan: Plan, report: dict, path: str | Path, max_in_flight: int | None = None, title: str | None = None) -> Path:
    """Draw a run's report (cluster.report.run_report, from a run of `plan`) into `path`: measured
    against predicted per stage, frames completed over time beside the plan's predicted schedule of
    as many frames (admitted `max_in_flight` at a time, as the run did), and memory per rank."""
    from .report import predicted_schedule, steady_throughput

    path = check_chart_path(path)
    schedule = predicted_schedule(plan, int(report.get("frames") or 0), max_in_flight)
    # fitted as the measured rate is; frames admitted one at a time come at the latency, not the period
    rate = steady_throughput(schedule.done_s) if schedule is not None and schedule.done_s.size else None
    fig = _figure_class()(figsize=(14, 11), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.0])
    _draw_run_stages(fig.add_subplot(grid[0, 0]), report)
    _draw_run_memory(fig.add_subplot(grid[0, 1]), plan, report)
    _draw_completions(fig.add_subplot(grid[1, :]), report, schedule, rate, max_in_flight)
    heading = title or (f"{plan.model} on {plan.n_ranks} rank{'s' if plan.n_ranks > 1 else ''} "
                        f"({'emulated, ' if report.get('emulated') else ''}{report.get('engine', plan.engine)}): "
                        f"measured {report['throughput_fps']:.2f} frames/s"
                        + (f", predicted {rate:.2f}" if rate is not None else ""))
    fig.suptitle(heading, fontsize=13)
    rows = [[f"stage {s['index']}", ", ".join(_device_label(plan, r) for r in s["ranks"]), s["mode"],
             _ms(s.get("predicted_compute_ms")), _ms(s["compute_ms"]), _ms(s.get("predicted_comm_ms")), _ms(s["comm_ms"]),
             _ms(s["wait_ms"])] for s in report["stages"]]
    table = (["stage", "ranks", "mode", "predicted compute ms", "measured compute ms", "predicted comm ms",
              "measured comm ms", "measured wait ms"], rows)
    lat = report.get("latency_ms") or {}
    notes = [f"latency p50 {lat['p50']:.1f} ms (predicted {plan.predicted_latency_s * 1e3:.1f} ms)"] if "p50" in lat else []
    return _save(fig, path, heading, table, notes)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _draw_run_stages(ax, report: dict) -> None:
    """Per stage, two bars: predicted compute + communication, measured compute + communication + waiting."""
    stages = report["stages"]
    y = [2.6 * i for i in range(len(stages))]
    pc = [s.get("predicted_compute_ms") or 0.0 for s in stages]
    pm = [s.get("predicted_comm_ms") or 0.0 for s in stages]
    mc = [s["compute_ms"] for s in stages]
    mm = [s["comm_ms"] for s in stages]
    mw = [s["wait_ms"] for s in stages]
    top = [v - 0.5 for v in y]
    low = [v + 0.5 for v in y]
    ax.barh(top, pc, height=0.9, color=COMPUTE, alpha=0.45, hatch="..", label="predicted compute")
    ax.barh(top, pm, left=pc, height=0.9, color=COMM, alpha=0.45, hatch="..", label="predicted communication")
    ax.barh(low, mc, height=0.9, color=COMPUTE, label="measured compute")
    ax.barh(low, mm, left=mc, height=0.9, color=COMM, label="measured communication")
    ax.barh(low, mw, left=[a + b for a, b in zip(mc, mm)], height=0.9, color=WAIT, label="measured waiting")
    for i, s in enumerate(stages):
        predicted = pc[i] + pm[i]
        if predicted:
            ax.text(mc[i] + mm[i] + mw[i], low[i], f"  x{(mc[i] + mm[i]) / predicted:.2f} of predicted (busy)",
                    va="center", fontsize=7.5)
    ax.set_yticks(y, [f"stage {s['index']} ({s['mode']})" for s in stages])
    ax.invert_yaxis()
    ax.set_xlim(0, max([a + b + c for a, b, c in zip(mc, mm, mw)] + [a + b for a, b in zip(pc, pm)] + [1e-3]) * 1.45)
    ax.set_xlabel("ms per frame (upper bar predicted, lower measured)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    ax.set_title("measured against predicted, per stage", fontsize=10)


def _draw_run_memory(ax, plan: Plan, report: dict) -> None:
    """Per rank: memory measured above its baseline beside the plan's prediction."""
    ranks = report["ranks"]
    y = [2.4 * i for i in range(len(ranks))]
    measured = [r["memory_above_baseline_bytes"] / 2 ** 20 for r in ranks]
    predicted = [(r["memory_predicted_bytes"] or 0) / 2 ** 20 for r in ranks]
    ax.barh([v - 0.45 for v in y], predicted, height=0.85, color=PREDICTED, hatch="..", label="predicted")
    ax.barh([v + 0.45 for v in y], measured, height=0.85, color=COMPUTE, label="measured above baseline")
    ax.set_yticks(y, [f"{_device_label(plan, r['rank'])} (stage {r['stage']})" for r in ranks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.set_title("memory per rank", fontsize=10)


def _draw_completions(ax, report: dict, schedule, rate: float | None, max_in_flight: int | None) -> None:
    """Frames completed over time, measured (the report's completion curve) and predicted (the
    plan's schedule of as many frames, cluster.report.predicted_schedule), each with its steady rate."""
    curve = report.get("completed") or []
    if curve:
        t, n = zip(*curve)
        ax.step([0.0, *t], [0, *n], where="post", color=COMPUTE, linewidth=1.8,
                label=f"measured: {report['throughput_fps']:.2f} frames/s once full")
    if schedule is not None and rate is not None:
        done = sorted(schedule.done_s.tolist())
        ax.step([0.0, *done], range(len(done) + 1), where="post", color="#cb181d", linestyle="--", linewidth=1.4,
                label=f"predicted: {rate:.2f} frames/s once full" + (", one frame at a time" if max_in_flight == 1 else ""))
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("frames completed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("throughput over time: frames completed", fontsize=10)


# --- files -----------------------------------------------------------------------------------------
def _save(fig, path: Path, title: str, table: tuple, notes: list) -> Path:
    """Write the figure as the suffix says; .html gets the SVG inline and the table below it."""
    from matplotlib import rc_context

    kind = path.suffix.lower()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "pisplit"}):
        if kind == ".png":
            fig.savefig(path, format="png", dpi=110)
            return path
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    if kind == ".svg":
        path.write_text(svg)
        return path
    head, rows = table
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype inside HTML
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left}} svg{{max-width:100%;height:auto}}</style></head>
<body><h1>{html.escape(title)}</h1>
{svg}
<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>
{f'<ul>{items}</ul>' if items else ''}
</body></html>
""")
    return path
