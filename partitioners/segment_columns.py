"""The columns of a segment table (partitioners.segment_table): which split options a segment of a
stage can take. Apart from the table so that segment_chains, which the table builds on, can read
them without importing it back."""
from __future__ import annotations

from .split_costs import FUSED, PLANNER_KINDS, TOKENS

OPTION_KINDS = ("none",) + PLANNER_KINDS


EXCHANGE = "conv-spatial"  # the kind an exchange span ('xspan') runs each of its segments with

# part counts a kind may also use on a stage of more slots: its first k slots (the lead and the
# fastest after it); more parts than a layer can use well cost messages and fixed costs per part
SUBSET_PARTS = (2, 3, 4, 6, 8, 12)


def table_columns(max_span: int, slots: int = 0) -> tuple:
    """(kind, role, d) of every column of a table whose spans reach `max_span`, for a stage of
    `slots` ranks: 'none' and the kinds over every slot (role 'kind'), then F_1..F_max_span (role
    'span', d segments after the first), X_1..X_max_span (role 'xspan': conv-spatial segment by
    segment over a region whose input stays on the parts for every segment that reads it,
    split_costs.SplitCatalogue.exchange_spans), C_0..C_(max_span - 1) (role 'inside', d segments
    before the span's end), then each kind over its first d slots for d in SUBSET_PARTS below
    `slots` (role 'subset'; the other ranks of the stage take no part in that segment)."""
    kinds = tuple((k, "kind", 0) for k in OPTION_KINDS)
    spans = tuple((FUSED, "span", d) for d in range(1, max_span + 1))
    exchange = tuple((EXCHANGE, "xspan", d) for d in range(1, max_span + 1))
    inside = tuple((FUSED, "inside", k) for k in range(max_span))
    subsets = tuple((k, "subset", d) for k in PLANNER_KINDS for d in SUBSET_PARTS if d < slots)
    # token spans (issue 19: attn-tokens through a whole transformer block, SplitCatalogue.token_spans):
    # T_d at the block's first segment, then their own inside columns as F_d's
    tokens = tuple((TOKENS, "span", d) for d in range(1, max_span + 1)) + tuple((TOKENS, "inside", k) for k in range(max_span))
    return kinds + spans + exchange + inside + tokens + subsets
