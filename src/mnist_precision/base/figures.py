"""Figures drawn as files: matplotlib's `Figure` without pyplot (no display, no
backend chosen for the process, no figure kept open), each saved whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mnist_precision.base.atomic import atomic_path


def new_figure(rows: int = 1, columns: int = 1, *, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure of `size` inches and its axes (an array of them for more than one)."""
    figure = Figure(figsize=size)
    return figure, figure.subplots(rows, columns)


def save_png(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
