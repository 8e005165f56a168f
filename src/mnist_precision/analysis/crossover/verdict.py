"""Where a variant pays, read from a crossover map with the thresholds below (no torch).

A timed cell pays when its whole 95% interval lies above 1 (the variant is
faster than fp32) and costs when it lies below; a cell timed once has no
interval and is called only beyond the report's noise margins (stats.FASTER,
stats.SLOWER). The sentence for a variant names, for each width, the batch
from which it pays at every larger batch of the grid.
"""

from __future__ import annotations

from mnist_precision.analysis.crossover.record import Cell, CrossoverMap
from mnist_precision.analysis.stats import FASTER, SLOWER

PAYS, COSTS, NEUTRAL, UNKNOWN = "pays", "costs", "no measurable difference", "not timed"


def verdict(cell: Cell) -> str:
    if cell.ratio is None:
        return UNKNOWN
    if cell.low is not None and cell.high is not None:
        return PAYS if cell.low > 1 else COSTS if cell.high < 1 else NEUTRAL
    return PAYS if cell.ratio > FASTER else COSTS if cell.ratio < SLOWER else NEUTRAL


def pays_from(cells: list[Cell]) -> dict[int, int | None]:
    """Per width: the smallest batch from which every larger batch pays too (None: from none)."""
    found: dict[int, int | None] = {}
    for width in sorted({cell.width for cell in cells}):
        row = sorted((cell.batch, verdict(cell)) for cell in cells if cell.width == width)
        start = None
        for batch, said in reversed(row):
            if said != PAYS:
                break
            start = batch
        found[width] = start
    return found


def sentence(cells: list[Cell]) -> str:
    """Where one variant (in one mode) pays against fp32, from its cells."""
    starts = pays_from(cells)
    unknown = sum(verdict(cell) == UNKNOWN for cell in cells)
    tail = f" ({unknown} of {len(cells)} cells not timed)" if unknown else ""
    paying = {width: batch for width, batch in starts.items() if batch is not None}
    if not paying:
        costs = sum(verdict(cell) == COSTS for cell in cells)
        return f"pays nowhere in this grid; slower than fp32 in {costs} of {len(cells)} cells{tail}"
    smallest = min(cell.batch for cell in cells)
    if all(batch == smallest for batch in starts.values() if batch is not None) and len(paying) == len(starts):
        return f"pays everywhere in this grid{tail}"
    parts = [f"width {width} from batch {batch}" for width, batch in paying.items()]
    nowhere = [str(width) for width, batch in starts.items() if batch is None]
    return f"pays at {', '.join(parts)}" + (f"; not at width {', '.join(nowhere)}" if nowhere else "") + tail


def sentences(crossover: CrossoverMap) -> list[str]:
    """One sentence per variant and mode of a crossover map."""
    return [
        f"{precision} ({mode}) {sentence(crossover.cells_of(precision, mode))}"
        for precision, mode in crossover.variants()
    ]
