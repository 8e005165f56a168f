"""The crossover map: its verdicts follow the numbers, its cells keep within the budget, its files say it."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_precision.analysis.crossover.measure import ONCE, TIMED, flops, time_cell, time_grid
from mnist_precision.analysis.crossover.output import read, write
from mnist_precision.analysis.crossover.record import NOT_TIMED, Cell, CrossoverMap
from mnist_precision.analysis.crossover.timing import Clock
from mnist_precision.analysis.crossover.verdict import COSTS, NEUTRAL, PAYS, UNKNOWN, pays_from, sentence, verdict
from mnist_precision.analysis.report import claims

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    """One intra-op thread: PyTorch's busy-waiting threads would time whatever else shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cell(
    width: int,
    batch: int,
    ratio: float | None,
    low: float | None = None,
    high: float | None = None,
    precision: str = "bf16",
    mode: str = "eager",
) -> Cell:
    return Cell(precision, mode, width, batch, TIMED if low else ONCE if ratio else NOT_TIMED, ratio, low, high)


def test_a_cell_pays_only_when_its_whole_interval_is_above_one():
    assert verdict(cell(256, 64, 1.30, 1.10, 1.50)) == PAYS
    assert verdict(cell(256, 64, 1.30, 0.95, 1.70)) == NEUTRAL  # faster on average, within noise
    assert verdict(cell(256, 64, 0.50, 0.40, 0.60)) == COSTS
    assert verdict(cell(256, 64, 1.04)) == NEUTRAL and verdict(cell(256, 64, 1.20)) == PAYS  # once: noise margins
    assert verdict(cell(256, 64, None)) == UNKNOWN


def test_the_sentence_names_from_which_batch_each_width_pays():
    grid = [
        cell(256, 64, 0.5, 0.4, 0.6),
        cell(256, 512, 0.9, 0.8, 1.0),
        cell(256, 4096, 1.2, 1.1, 1.3),
        cell(4096, 64, 1.2, 1.1, 1.3),
        cell(4096, 512, 1.8, 1.6, 2.0),
        cell(4096, 4096, 2.5, 2.2, 2.8),
        cell(1024, 64, 1.3, 1.1, 1.4),
        cell(1024, 512, 0.9, 0.8, 1.05),
        cell(1024, 4096, None),
    ]
    assert pays_from(grid) == {256: 4096, 1024: None, 4096: 64}
    assert (
        sentence(grid) == "pays at width 256 from batch 4096, width 4096 from batch 64; not at width 1024 "
        "(1 of 9 cells not timed)"
    )
    slower = [cell(w, b, 0.3, 0.2, 0.4) for w in (256, 1024) for b in (64, 512)]
    assert sentence(slower) == "pays nowhere in this grid; slower than fp32 in 4 of 4 cells"
    faster = [cell(w, b, 1.5, 1.2, 1.8) for w in (256, 1024) for b in (64, 512)]
    assert sentence(faster) == "pays everywhere in this grid"


def test_a_cell_too_slow_for_its_budget_is_timed_once_or_not_at_all(one_thread):
    clock = Clock(CPU)
    skipped = time_cell(Cell("bf16", "eager", 32, 8), CPU, clock, budget_s=1.0, estimate_s=5.0)
    assert skipped.status == NOT_TIMED and skipped.ratio is None and "about 5.0 s" in skipped.note
    once = time_cell(Cell("bf16", "eager", 32, 8), CPU, clock, budget_s=1e-6, estimate_s=None)
    assert once.status == ONCE and once.ratio > 0 and once.low is None and once.steps == 1
    timed = time_cell(Cell("bf16", "eager", 32, 8), CPU, clock, budget_s=0.5, estimate_s=None)
    assert timed.status == TIMED and timed.low <= timed.ratio <= timed.high and timed.steps >= 1


def test_the_grid_is_timed_smallest_first_within_the_budget(one_thread):
    seen = []
    cells = time_grid(["bf16", "fp16"], ["eager"], [16, 32], [4, 8], CPU, budget_s=2.0, progress=seen.append)
    assert len(cells) == 8 and seen == cells
    sizes = [flops(c) for c in cells]
    assert sizes == sorted(sizes)
    assert all(c.status in (TIMED, ONCE, NOT_TIMED) for c in cells) and any(c.status == TIMED for c in cells)


def test_the_files_say_the_map_and_the_report_cites_it(tmp_path):
    grid = [
        cell(256, 64, 0.5, 0.4, 0.6),
        cell(256, 512, 1.2, 1.1, 1.3),
        cell(4096, 64, 1.1, 0.9, 1.3),
        cell(4096, 512, 2.0, 1.8, 2.2),
    ]
    result = CrossoverMap(
        device="cuda (NVIDIA H200; compute capability 9.0)",
        software="torch 2.14.1, CUDA 13.0",
        date="2026-12-03",
        budget_s=180.0,
        elapsed_s=170.0,
        repeats=5,
        widths=[256, 4096],
        batches=[64, 512],
        modes=["eager"],
        skipped={},
        threads=8,
        cpus=16,
        cells=grid,
    )
    files = write(result, tmp_path, "crossover")
    assert sorted(p.name for p in files) == ["crossover-bf16.png", "crossover.json", "crossover.md"]
    assert json.loads((tmp_path / "crossover.json").read_text()) == result.to_dict()
    assert read(tmp_path / "crossover.json") == result  # the file reads back as the record
    assert (tmp_path / "crossover-bf16.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    text = (tmp_path / "crossover.md").read_text()
    assert "bf16 (eager) pays at width 256 from batch 512, width 4096 from batch 512." in text
    assert "| 256 | 0.50× [0.40, 0.60] ↓ | 1.20× [1.10, 1.30] ↑ |" in text

    said = claims.speed([], lambda group: [], [("run-1", result)])
    assert "- On a GPU: not measured" not in said
    assert (
        "- Crossover map on cuda (NVIDIA H200; compute capability 9.0) (torch 2.14.1, CUDA 13.0; benchmark run "
        "run-1): bf16 (eager) pays at width 256 from batch 512, width 4096 from batch 512."
    ) in said
