"""The crossover map as files: JSON (the figures), Markdown (tables and sentences), a heatmap per variant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from mnist_precision.analysis.crossover.record import Cell, CrossoverMap
from mnist_precision.analysis.crossover.verdict import COSTS, PAYS, sentence, verdict
from mnist_precision.base.atomic import atomic_path, atomic_write_json
from mnist_precision.base.figures import new_figure, save_png

MARK = {PAYS: " ↑", COSTS: " ↓"}


def label(cell: Cell) -> str:
    if cell.ratio is None:
        return "not timed"
    if cell.low is None or cell.high is None:
        return f"{cell.ratio:.2f}× (once){MARK.get(verdict(cell), '')}"
    return f"{cell.ratio:.2f}× [{cell.low:.2f}, {cell.high:.2f}]{MARK.get(verdict(cell), '')}"


def table(result: CrossoverMap, precision: str, mode: str) -> list[str]:
    cells = {(c.width, c.batch): c for c in result.cells_of(precision, mode)}
    lines = [
        "| width \\ batch | " + " | ".join(str(b) for b in result.batches) + " |",
        "| --- |" + " ---: |" * len(result.batches),
    ]
    for width in result.widths:
        lines.append(f"| {width} | " + " | ".join(label(cells[(width, b)]) for b in result.batches) + " |")
    return lines


def markdown(result: CrossoverMap, figures: dict[tuple[str, str], str]) -> str:
    lines = [
        f"# Where each precision pays: {result.device}",
        "",
        f"`mnist-precision crossover` on {result.date}: one training step (forward, backward, "
        "optimizer; data already on the device) of `Linear(784, width) -> ReLU -> Linear(width, 10)` "
        f"in each precision, against fp32, on {result.device} ({result.software}). "
        f"Each cell: the variant's throughput over fp32's, from {result.repeats} interleaved turns "
        "(fp32's steps, then the variant's), with the 95% interval of the ratio; ↑ pays (interval above 1), "
        "↓ costs (below 1). Cells too slow for turns within the budget are timed once (no interval); cells "
        f"whose one step would not fit are not timed. Budget {result.budget_s:.0f} s, "
        f"used {result.elapsed_s:.0f} s.",
        "",
    ]
    for precision, reason in result.skipped.items():
        lines.append(f"- {precision}: not run here ({reason}).")
    for precision, mode in result.variants():
        lines += [
            "",
            f"## {precision}, {mode}",
            "",
            f"{precision} ({mode}) {sentence(result.cells_of(precision, mode))}.",
            "",
            *table(result, precision, mode),
            "",
            f"![{precision} {mode}]({figures[(precision, mode)]})",
        ]
    return "\n".join(lines) + "\n"


def heatmap(result: CrossoverMap, precision: str, mode: str, path: Path) -> None:
    """Ratio against fp32 on a log color scale centred on 1.0; the contour where it crosses 1."""
    cells = {(c.width, c.batch): c for c in result.cells_of(precision, mode)}
    widths, batches = result.widths, result.batches
    grid = np.array([[cells[(w, b)].ratio or math.nan for b in batches] for w in widths], dtype=float)
    logs = np.log2(grid)
    reach = max(1.0, float(np.nanmax(np.abs(logs)))) if np.isfinite(logs).any() else 1.0
    figure, axes = new_figure(size=(6.5, 4.8))
    image = axes.imshow(np.ma.masked_invalid(logs), cmap="RdBu", norm=TwoSlopeNorm(0.0, -reach, reach), origin="lower")
    for i, width in enumerate(widths):
        for j, batch in enumerate(batches):
            dark = np.isfinite(logs[i, j]) and abs(logs[i, j]) > reach / 2
            axes.text(
                j,
                i,
                label(cells[(width, batch)]).replace(" [", "\n["),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    if np.isfinite(logs).sum() >= 4 and np.nanmin(logs) < 0 < np.nanmax(logs):
        axes.contour(np.ma.masked_invalid(logs), levels=[0.0], colors="black", linewidths=1.5)
    axes.set(
        xticks=range(len(batches)),
        xticklabels=batches,
        yticks=range(len(widths)),
        yticklabels=widths,
        xlabel="batch size",
        ylabel="hidden width",
        title=f"{precision} ({mode}) against fp32\n{result.device}",
    )
    bar = figure.colorbar(image, ax=axes)
    bar.set_label("throughput ratio, log2 (0: as fast as fp32)")
    figure.tight_layout()
    save_png(figure, path)


def write(result: CrossoverMap, out: Path, name: str) -> list[Path]:
    """`<name>.json`, `<name>.md` and `<name>-<precision>[-compiled].png` in `out`; the paths written."""
    figures = {}
    written = [out / f"{name}.json"]
    atomic_write_json(written[0], result.to_dict())
    for precision, mode in result.variants():
        figure = out / f"{name}-{precision}{'' if mode == 'eager' else '-' + mode}.png"
        heatmap(result, precision, mode, figure)
        figures[(precision, mode)] = figure.name
        written.append(figure)
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(markdown(result, figures))
    return [out / f"{name}.md", *written]


def read(path: Path) -> CrossoverMap:
    return CrossoverMap.from_dict(json.loads(path.read_text()))
