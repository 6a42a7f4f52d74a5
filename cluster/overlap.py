"""Halo rows in flight while a strip computes its interior.

A conv-spatial part whose input strip it already holds (the previous segment kept it on this rank)
needs only a few halo rows from its neighbours. The output rows that read none of them (the interior)
can be computed while those rows travel; only the edge rows wait for them. The part is cut once more,
with the same split kind, into [top edge, interior, bottom edge] by output rows, chosen as the
smallest edges whose interior reads only held rows; the three sub-parts share the part's weights.

Example: VGG16 block1_conv2 + pool on rows [28, 56) of 112 pooled rows reads conv1 rows [55, 113) and
holds [56, 112): the top edge is pooled row 28 (reads row 55), the bottom edge pooled row 55 (reads
row 112), the 26 rows between are computed before either halo row has arrived.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph


@dataclass
class InteriorFirst:
    """The sub-parts of one part: (engine, feed rows, output rows) for the top edge, the interior and
    the bottom edge (edges may be absent); `feed` is the part graph input they cut."""

    feed: str
    pieces: list  # (engine, (row0, row1) of the feed, (row0, row1) of the part output, output name, feed name)
    interior: int
    out_shape: tuple

    @classmethod
    def plan(cls, part: Graph, feed: str, held_rows: tuple, engine: str) -> "InteriorFirst | None":
        """The cut of `part` (a conv-spatial part graph reading `feed`) whose interior reads only feed
        rows [held_rows), or None when no output row qualifies or the part is not a row chain."""
        from partitioners.splits import split_layer

        lo, hi = held_rows
        if len(part.inputs) != 1 or feed not in part.inputs or len(part.outputs) != 1:
            return None
        out_rows = part.shapes[part.outputs[0]][1]
        first, last = part.nodes[0].name, part.nodes[-1].name

        def cut(top: int, bottom: int):
            sizes = [s for s in (top, out_rows - top - bottom, bottom) if s > 0]
            try:
                return split_layer(part, first, "conv-spatial", tuple(sizes), last=last), (1 if top else 0)
            except PisplitError:
                return None, 0

        def rows_read(split, index):
            (box,) = [f.box for f in split.parts[index].feeds]
            return box[0]

        best = None
        for top in range(0, out_rows):
            for bottom in range(0, out_rows - top):
                if out_rows - top - bottom < 1:
                    break
                split, inner = cut(top, bottom)
                if split is None:
                    continue
                r0, r1 = rows_read(split, inner)
                if r0 < lo:
                    break  # a wider top edge is needed
                if r1 <= hi:
                    best = (split, inner)
                    break
            if best is not None:
                break
        if best is None or best[0].n_parts == 1:
            return None  # nothing found, or nothing to overlap (the part reads no halo)
        split, inner = best
        pieces = []
        for p in split.parts:
            graph = split.part_graph(p.index, part.weights)
            (f,) = p.feeds
            pieces.append((make_engine(graph, engine), f.box[0], p.output_box[0], graph.outputs[0], f.name))
        return cls(feed, pieces, inner, tuple(part.shapes[part.outputs[0]]))

    def _run(self, index: int, x: np.ndarray, out: np.ndarray, hooks) -> None:
        engine, (r0, r1), (o0, o1), name, feed = self.pieces[index]
        y = hooks.compute(lambda: engine.run({feed: x[:, r0:r1]})[name], engine)
        out[:, o0:o1] = y

    def run_interior(self, x: np.ndarray, hooks) -> np.ndarray:
        """Compute the interior rows from the held rows of `x` (the halo rows may still be missing);
        returns the part's output array with those rows filled."""
        out = np.empty(self.out_shape, np.float32)
        self._run(self.interior, x, out, hooks)
        return out

    def run_edges(self, x: np.ndarray, out: np.ndarray, hooks) -> np.ndarray:
        """Compute the edge rows once `x` is whole; returns the complete output."""
        for i in range(len(self.pieces)):
            if i != self.interior:
                self._run(i, x, out, hooks)
        return out


def held_rows(feed_box: tuple, held_box: tuple) -> tuple:
    """The rows of a feed box (in its own coordinates) that a rank's held piece covers."""
    (f0, f1), (h0, h1) = feed_box[0], held_box[0]
    return max(h0, f0) - f0, min(h1, f1) - f0

