"""Which runs are training runs. The commands add runs of their own beside
them (a report's summary, a benchmark, a variant's parent run), tagged with
their type, so that no count, comparison or stale-run check takes one of
those for a training run."""

from __future__ import annotations

from collections.abc import Mapping

from mnist_precision.base import names

RUN_TYPE_TAG = names.RUN_TYPE
SUMMARY = "summary"  # a report, in `<experiment>-reports`
BENCHMARK = "benchmark"  # a crossover map, in `<experiment>-benchmarks`
VARIANT = "variant"  # a variant's parent run, over its seed runs, in the training experiment


def is_training_run(tags: Mapping[str, str]) -> bool:
    return RUN_TYPE_TAG not in tags
