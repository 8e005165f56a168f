"""The crossover map as records (no torch): each cell a variant's throughput against
fp32's at one width and batch, and the map that holds them with where they were
timed. Its JSON file is `CrossoverMap.to_dict()`; a file written earlier reads back
through `from_dict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NOT_TIMED = "not timed"


@dataclass
class Cell:
    precision: str
    mode: str  # "eager", or "compiled" (train.compile: CUDA graphs on a GPU)
    width: int
    batch: int
    status: str = NOT_TIMED
    ratio: float | None = None  # the variant's throughput over fp32's
    low: float | None = None  # its 95% interval (timed cells)
    high: float | None = None
    fp32_ms: float | None = None  # per step
    variant_ms: float | None = None
    steps: int = 0  # per turn
    note: str = ""


@dataclass(frozen=True)
class CrossoverMap:
    device: str  # the device, what it offers for each precision, and its threads
    software: str
    date: str
    budget_s: float
    elapsed_s: float
    repeats: int
    widths: list[int]
    batches: list[int]
    modes: list[str]
    skipped: dict[str, str]  # precision: why this device does not run it
    threads: int
    cpus: int | None
    cells: list[Cell] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrossoverMap:
        return cls(**data | {"cells": [Cell(**cell) for cell in data["cells"]]})

    def variants(self) -> list[tuple[str, str]]:
        """The (precision, mode) pairs, in the order they were asked for."""
        return list(dict.fromkeys((cell.precision, cell.mode) for cell in self.cells))

    def cells_of(self, precision: str, mode: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.precision == precision and cell.mode == mode]
