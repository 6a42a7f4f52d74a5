"""Early exits in the pipeline runtime: a frame answered at a side branch leaves the pipeline there.

The exit decision is partitioners.exits' (normalised entropy eta <= T, read from the exit tensor as
probabilities when a softmax makes it, else as logits). It is taken by the entry rank of the stage
that computes the exit's node: a single or data-parallel stage runs in pieces that end after each of
its exits (ExitingRunner), so a frame answered mid-stage skips the rest of the stage too; a split
stage decides after the whole stage (its ranks run its segments together).

Protocol (every message a numpy buffer, nothing pickled):
- answer: the rank that answers a frame (an exit fired, or the last stage computed it) sends rank 0
  one buffer on TAG_ANSWER: the FrameCodec header [frame, start_ns, answering exit index, 0] and the
  model's outputs in the model's order, NaN where the frame never computed them (a later exit, the
  final output). Rank 0 keeps `window` receives from any source posted and files each answer under
  its frame id, so answers arrive in any order and each frame is filed exactly once (a second answer
  for a frame is an error); the sink writes them by frame. Receives still posted when every frame
  has been answered are cancelled.
- skip: a frame answered at stage k is not computed or sent by later stages, but each of them still
  has a receive posted for it (their per-frame schedules stay the plan's: frames_of). Stage k sends
  the next stage's entry rank for that frame a header-only buffer [frame, start_ns, SKIP, 0] (32
  bytes) in place of the frame's tensors, and every later stage forwards it the same way, so no rank
  waits for a frame that will not come and no frame is lost.
- gate: a split stage behind an exit tells its workers, per frame, whether the frame is computed
  (int64 [frame, 1]) or skipped ([frame, 0]) on TAG_GATE, so they join exactly the frames the lead runs.

Plans without exits run exactly as before: PipelineRank makes no ExitRouting for them.
"""
from __future__ import annotations

import numpy as np

from layers.errors import PisplitError
from partitioners.exits import FINAL, ExitPoint, exit_fires, final_output, parse_exit_overrides, resolve_exits, stage_of_node
from partitioners.vocabulary import StageMode

from . import transport

__all__ = ["ExitRouting", "active_exits", "parse_exit_overrides", "TAG_ANSWER", "TAG_GATE", "SKIP"]

TAG_ANSWER = 92
TAG_GATE = 93
SKIP = -1  # the third header slot of a skip message
EXIT_JOURNAL_PREFIX = "pisplit-exit:"  # journal tensor: the answering exit of each frame (ExitState.journal_key)


def active_exits(plan, graph, overrides: dict | None = None) -> list[ExitPoint]:
    """The plan's exits with `--exit NAME=T` overrides applied (an override may add an exit the plan
    does not name), resolved against the graph and ordered by depth."""
    thresholds = {e.name: e.threshold for e in plan.exits}
    thresholds.update(overrides or {})
    return resolve_exits(graph, thresholds)


class _Discard:
    """The 'codec' of sends whose small buffers are not reused (skips, gates)."""

    def release(self, buf) -> None:
        pass


class ExitRouting:
    """One rank's part of the exit protocol (see the module docstring). Made by PipelineRank when the
    run has exits; its hooks: `route` (after compute), `arrived` (after a receive), `worker_skips`
    (a split stage's worker, before each frame), `post_sink` / `poll_sink` (rank 0), `annotate`."""

    def __init__(self, rank, points: list[ExitPoint]):
        from .runtime import FrameCodec

        plan, graph = rank.plan, rank.graph
        self.points = points
        self.final = final_output(graph, [p.name for p in points])
        self.names = [p.name for p in points] + [self.final]
        self.labels = [p.name for p in points] + [FINAL if self.final not in (p.name for p in points) else self.final]
        stages = plan.stages
        self.exit_stage = [stage_of_node(stages, p.node) for p in points]
        k = rank.stage.index
        self.mine = [i for i, s in enumerate(self.exit_stage) if s == k]
        self.gated = any(s < k for s in self.exit_stage)  # frames may arrive here as skips
        self.is_last = k == len(stages) - 1
        self.answer_codec = FrameCodec(graph, rank.result_codec.names)
        self.blank = {t: np.full(graph.shapes[t], np.nan, np.float32) for t in self.answer_codec.names}
        self.discard = _Discard()
        self.counts = np.zeros(len(self.names), np.int64)  # frames this rank answered, per exit
        self.runner = None  # an ExitingRunner when this stage stops at exits inside it
        stage = rank.stage
        inside = sorted({points[i].node + 1 for i in self.mine if points[i].node + 1 < stage.node_stop})
        if inside and stage.mode != StageMode.SPLIT and rank.rank in (stage.ranks if stage.mode == StageMode.DATA_PARALLEL else stage.ranks[:1]):
            kind, _, live = rank.step.parts[0]
            self.runner = ExitingRunner(graph, stage, inside, rank.options.engine or plan.engine, self)
            rank.step.parts[0] = (kind, self.runner, live)
        self.skipped = 0  # frames this rank passed on as skips
        if rank.rank == 0:
            self.answered = np.full(rank.n_frames, -1, np.int16)
            self.sink_recvs: list = []  # (request, buffer), in posting order
            self.sink_window = 0

    # --- entry ranks ---------------------------------------------------------------------------------
    def fires(self, i: int, tensors: dict) -> bool:
        """Whether exit i answers the frame whose tensors are given (its normalised entropy <= T).
        A cheap lower bound on the entropy settles most frames that go on (every one at T = 0); the
        rest get the exact value, so decisions are the reference's (partitioners.exits.exit_fires)."""
        p = self.points[i]
        return exit_fires(tensors[p.name], p.kind, p.threshold)

    def decide(self, tensors: dict) -> int | None:
        """The exit of this stage that answers the frame: where the stage stopped early, else the first
        of its exits whose normalised entropy is at most its threshold, else None."""
        checked = ()
        if self.runner is not None and self.runner.armed:
            if self.runner.fired is not None:
                return self.runner.fired
            checked = self.runner.checked  # the exits inside the stage: the runner found none sure
        for i in self.mine:
            if i in checked:
                continue
            if self.fires(i, tensors):
                return i
        return None

    def route(self, rank, frame: int, tensors: dict, start_ns: int) -> bool:
        """After the stage computed `frame`: answer it here when an exit of this stage fires (and
        send the next stage a skip) or when this is the last stage. True when handled, False when the
        frame goes on to the next stage as usual."""
        index = self.decide(tensors)
        if index is None and not self.is_last:
            return False
        self.answer(rank, frame, tensors, start_ns, len(self.points) if index is None else index)
        if not self.is_last:
            self.skip(rank, frame, start_ns)
        self._back_pressure(rank, frame)
        return True

    def answer(self, rank, frame: int, tensors: dict, start_ns: int, index: int) -> None:
        full = {t: tensors[t] if t in tensors else self.blank[t] for t in self.answer_codec.names}
        self.counts[index] += 1
        if rank.rank == 0:
            self.take(rank, frame, full, start_ns, index)
            return
        buf = self.answer_codec.pack(frame, full, start_ns, index, 0)
        rank.sends.append((transport.isend_buffer(rank.comm, buf, 0, TAG_ANSWER), buf, self.answer_codec, 0, frame))

    def skip(self, rank, frame: int, start_ns: int) -> None:
        """Tell the next stage's entry rank for `frame` that it will not come (a 32-byte header)."""
        from .runtime import TAG_STAGE, FrameCodec, entry_rank

        nxt = rank.plan.stages[rank.stage.index + 1]
        dest = entry_rank(nxt, frame)
        buf = np.zeros(FrameCodec.HEADER, np.float32)
        buf.view(np.int64)[:] = (frame, start_ns, SKIP, 0)
        rank.sends.append((transport.isend_buffer(rank.comm, buf, dest, TAG_STAGE + nxt.index), buf, self.discard, dest, frame))
        self.skipped += 1

    @staticmethod
    def is_skip(buf) -> bool:
        if buf is None:
            return False
        head = buf[:8].view(np.int64)
        return int(head[2]) == SKIP and int(head[3]) == 0

    def arrived(self, rank, frame: int, buf, start_ns: int) -> bool:
        """After the entry rank received `frame`: True when it is a skip (passed on, nothing computed);
        a split stage behind an exit first tells its workers whether to join."""
        if self.runner is not None:
            self.runner.armed = True  # frames from here on (warm-up ran every piece)
        skipped = self.gated and self.is_skip(buf)
        if self.gated and rank.stage.mode == StageMode.SPLIT:
            self._gate(rank, frame, not skipped)
        if not skipped:
            return False
        if not self.is_last:
            self.skip(rank, frame, start_ns)
            self._back_pressure(rank, frame)
        else:
            self.skipped += 1
        return True

    def _gate(self, rank, frame: int, go: bool) -> None:
        for worker in rank.stage.ranks[1:]:
            buf = np.array([frame, int(go)], np.int64)
            rank.sends.append((transport.isend_buffer(rank.comm, buf, worker, TAG_GATE), buf, self.discard, worker, frame))

    def worker_skips(self, rank, frame: int) -> bool:
        """A split stage's worker, before `frame`: True when the lead skips it (wait for its word)."""
        if not self.gated:
            return False
        from .runtime import WAIT_INPUT

        lead = rank.stage.ranks[0]
        buf = np.zeros(2, np.int64)
        request = transport.irecv_buffer(rank.comm, buf, lead, TAG_GATE)
        what = f"no word on frame {frame} from the lead of split stage {rank.stage.index}, {rank._name(lead)}"
        rank.stats.wait_s += rank._wait_until(lambda: transport.request_done(request), WAIT_INPUT, frame,
                                              waiting=lambda: (what, lead), follows=True)
        if int(buf[0]) != frame:
            raise PisplitError(f"runtime: rank {rank.rank} expected word on frame {frame}, got frame {int(buf[0])}")
        if not buf[1]:
            self.skipped += 1
        return not buf[1]

    def _back_pressure(self, rank, frame: int) -> None:
        from .runtime import SEND_BLOCKED

        if len(rank.sends) > rank.window:
            limit = rank.window
            rank.stats.comm_s += rank._wait_until(lambda: len(rank.sends) <= limit, SEND_BLOCKED, frame,
                                                  waiting=rank._waiting_for_send)

    # --- rank 0: the sink ----------------------------------------------------------------------------
    def take(self, rank, frame: int, tensors: dict, start_ns: int, index: int) -> None:
        if not 0 <= index < len(self.names):
            raise PisplitError(f"runtime: answer of frame {frame} names exit {index}; the run has {len(self.names)} answers")
        if rank.options.on_result:  # a resilient run's journal keeps the answering exit beside the tensors
            tensors = {**tensors, self.journal_key(): np.full((1, 1), index, np.float32)}
        rank._take_result(frame, tensors, start_ns)
        rank.argmax[frame] = int(np.argmax(np.asarray(tensors[self.names[index]]).reshape(-1)))
        self.answered[frame] = index

    def journal_key(self) -> str:
        """The name of the answering exit's index among the tensors rank 0 hands its on_result (a
        resilient run's journal, cluster.supervisor): EXIT_JOURNAL_PREFIX, then label=tensor per
        exit in index order, so the journal alone says which tensor answered each frame."""
        return EXIT_JOURNAL_PREFIX + ",".join(f"{label}={name}" for label, name in zip(self.labels, self.names))

    def post_sink(self, rank) -> None:
        if not self.sink_window:
            self.sink_window = max(int(rank.max_in_flight), 1)
        while len(self.sink_recvs) < self.sink_window and rank.done < rank.n_frames:
            buf = self.answer_codec.empty()
            self.sink_recvs.append((transport.irecv_buffer(rank.comm, buf, transport.MPI.ANY_SOURCE, TAG_ANSWER), buf))

    def poll_sink(self, rank) -> bool:
        from .runtime import FrameCodec

        progressed = False
        kept = []
        for request, buf in self.sink_recvs:
            if transport.request_done(request):
                frame, start_ns, index, _ = FrameCodec.header(buf)
                self.take(rank, frame, self.answer_codec.unpack(buf), start_ns, index)
                self.answer_codec.release(buf)
                progressed = True
            else:
                kept.append((request, buf))
        self.sink_recvs = kept
        if rank.done >= rank.n_frames:
            self.cancel_sink()
        else:
            self.post_sink(rank)
        return progressed

    def cancel_sink(self) -> None:
        """Every frame is answered: the receives still posted will match nothing; cancel them."""
        for request, _ in self.sink_recvs:
            request.Cancel()
            request.Wait()
        self.sink_recvs = []

    def annotate(self, result) -> None:
        """Rank 0: the answering exit of every frame on the RunResult."""
        result.exit_index = self.answered.astype(np.int64)
        result.exit_names = tuple(self.labels)


class ExitingRunner:
    """A single or data-parallel stage's shard run in pieces that end right after each exit inside the
    stage: after a piece, the exits it made are checked and a sure frame stops there (`fired`), so
    the rest of the stage is not computed. Until `armed` (warm-up) every piece runs.

    With the numpy engine the pieces are ranges of one shard graph (Graph.execute over [a, b)), its
    tensors checked for NaN once where the frame stops, as the engine checks a whole stage: a run
    that no exit stops costs what the stage's engine does (per-piece engines paid ~10% of AlexNet's
    stage in call overhead and finite checks). Other engines run one engine per piece.

    Stands in for the stage's engine in runtime._Step (`graph` for loading weights and warm-up input,
    `run(tensors)` -> the tensors live where it stopped)."""

    def __init__(self, graph, stage, cuts: list, engine: str, routing: ExitRouting):
        from layers.engine import make_engine

        from .runtime import shard_graph

        self.graph = shard_graph(graph, stage.node_start, stage.node_stop)
        bounds = [stage.node_start, *cuts, stage.node_stop]
        self.ranges = [(a - stage.node_start, b - stage.node_start) for a, b in zip(bounds[:-1], bounds[1:])]
        self.pieces = None if engine == "numpy" else [make_engine(shard_graph(graph, a, b), engine) for a, b in zip(bounds[:-1], bounds[1:])]
        self.checks = {b - stage.node_start: [i for i in routing.mine if routing.points[i].node + 1 == b] for b in cuts}
        self.checked = frozenset(i for ids in self.checks.values() for i in ids)  # decided here, not again by ExitRouting.decide
        self.routing = routing
        self.armed = False
        self.fired: int | None = None
        self.schedule: tuple | None = None  # numpy: (tensors freed after each node, tensors live at each range end)

    def run(self, tensors: dict) -> dict:
        self.fired = None
        if self.pieces is None:
            return self._run_ranges(tensors)
        for engine, (_, stop) in zip(self.pieces, self.ranges):
            tensors = engine.run(tensors)
            if self._stops(stop, tensors):
                return tensors
        return tensors

    def _run_ranges(self, tensors: dict) -> dict:
        """The numpy path: Graph.execute's loop over the stage's nodes (inputs checked as it checks
        them, each tensor freed after its last reader), with the cut tensors of every range end and the
        freeing schedule worked out once instead of per range."""
        from layers.engine import check_finite

        g = self.graph
        if self.schedule is None:
            last: dict = {}
            for i, node in enumerate(g.nodes):
                for t in node.inputs:
                    last[t] = i
            for t in g.outputs:
                last[t] = len(g.nodes)
            frees = [[t for t in set(node.inputs) if last.get(t, -1) <= i] for i, node in enumerate(g.nodes)]
            self.schedule = (frees, {stop: g.cut_tensors(stop) for _, stop in self.ranges})
        frees, live = self.schedule
        env = g.execute(tensors, 0, 0)  # the stage's inputs, checked (names, shapes, dtypes)
        start = end = 0
        for _, stop in self.ranges:
            for i in range(start, stop):
                node = g.nodes[i]
                for t, y in zip(node.outputs, g.run_node(node, [env[t] for t in node.inputs])):
                    env[t] = y
                for t in frees[i]:
                    env.pop(t, None)
            start = end = stop
            if self._stops(stop, env):
                break
        out = {t: env[t] for t in live[end]}
        check_finite(g, tensors, out)
        return out

    def _stops(self, stop: int, tensors: dict) -> bool:
        if self.armed:
            for i in self.checks.get(stop, ()):
                if self.routing.fires(i, tensors):
                    self.fired = i
                    return True
        return False


def exit_counts(result) -> dict | None:
    """{exit label: frames answered there} of a run with exits, else None."""
    if getattr(result, "exit_index", None) is None:
        return None
    index = np.asarray(result.exit_index)
    index = index[index >= 0]
    counts = np.bincount(index, minlength=len(result.exit_names))
    return {name: int(c) for name, c in zip(result.exit_names, counts)}
