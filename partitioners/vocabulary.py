"""The words plans are written in: split kinds and stage modes, as string enums.

A member is a `str` (StrEnum): it compares and hashes equal to its value, prints as its value and
goes into JSON as its value, so plans on disk and code comparing with the plain strings stay as they
are, while new code can name `SplitKind.CONV_CHANNEL` and a type checker sees the closed set.
partitioners.plan validates stage modes and segment kinds against these; partitioners.splits refuses
an unknown split kind with them.
"""
from __future__ import annotations

from enum import StrEnum


class SplitKind(StrEnum):
    """How one layer (or a segment of layers) is cut over the ranks of a split stage."""

    FC_OUTPUT = "fc-output"  # a dense layer's output units
    FC_INPUT = "fc-input"  # a dense layer's input units (partial sums added)
    CONV_CHANNEL = "conv-channel"  # a convolution's output channels
    CONV_SPATIAL = "conv-spatial"  # a convolution's output rows (bands, with halos)
    CONV_FILTER = "conv-filter"  # a convolution's input channels (partial sums added)
    FUSED_TILES = "fused-tiles"  # a run of layers in output tiles of a grid
    DATA_PARALLEL = "data-parallel"  # whole frames dealt to replicas
    ATTN_HEADS = "attn-heads"  # an attention block's heads (issue 19, partitioners.split_heads)
    ATTN_TOKENS = "attn-tokens"  # a transformer block's tokens, K/V all-gathered (issue 19, partitioners.split_tokens)


class StageMode(StrEnum):
    """How a pipeline stage uses its ranks (see partitioners.plan)."""

    SINGLE = "single"  # one rank runs the stage
    SPLIT = "split"  # the ranks cooperate on every frame, segment by segment
    DATA_PARALLEL = "data-parallel"  # every rank holds the whole stage; frames are dealt to them


NO_SPLIT = "none"  # the kind of a split stage's segment that runs on its lead alone

# The stage modes as module constants, for code that runs per frame (runtime.entry_rank, the report's
# predicted schedule): on Python 3.11 reading `StageMode.SPLIT` goes through EnumType.__getattr__'s
# lookup hook (~0.3 us, 4-5x a module global; 3.12 dropped it), which made a 100,000-frame predicted
# schedule 30% slower. The same members, so they compare, hash and print as their strings.
SINGLE_MODE, SPLIT_MODE, DATA_PARALLEL_MODE = StageMode.SINGLE, StageMode.SPLIT, StageMode.DATA_PARALLEL
