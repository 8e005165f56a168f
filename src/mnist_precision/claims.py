"""The mixed-precision tutorial's claims, each answered from the runs of one device.

The tutorial this project started from says that half precision halves
storage, is faster on GPUs, keeps accuracy "in many cases", and speaks of half
precision in general, not only of mixed precision. Each answer here is
generated from the measured numbers with the thresholds below; no sentence is
written for one outcome.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from .crossover.verdict import sentences
from .stats import FASTER, SLOWER, Interval

HALF_STORAGE = 0.55  # stored bytes at most this share of fp32's: storage is halved
TRUE_HALF = ("fp16-true", "bf16-true")


def speed_word(ratio: Interval) -> str:
    if ratio.has_interval:
        return "faster" if ratio.low > 1 else "slower" if ratio.high < 1 else "no measurable difference"
    return "faster" if ratio.estimate > FASTER else "slower" if ratio.estimate < SLOWER else "about the same"


def accuracy_word(difference: Interval) -> str:
    inside = difference.contains(0.0)
    if inside is None:
        return f"{difference.estimate:+.4f}, too few seeds to tell"
    where = "within noise" if inside else "lower" if difference.high < 0 else "higher"
    return f"{difference.estimate:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}], {where}"


def storage(groups, mean: Callable) -> str:
    lines = []
    for group in groups:
        runs = [run for runs in group.runs.values() for run in runs.values() if run.model_bytes_fp32]
        if not runs:
            continue
        ratio = runs[0].model_bytes_fp16 / runs[0].model_bytes_fp32
        stored = [run.fp16_stored_test_accuracy - run.test_accuracy for run in runs
                  if run.fp16_stored_test_accuracy is not None]
        answer = "Yes" if ratio <= HALF_STORAGE else "No"
        effect = (f"; the fp16-stored copy's test accuracy differs by {mean(stored):+.4f} on average "
                  f"(largest {max(stored, key=abs):+.4f}, {len(stored)} runs)" if stored else "")
        lines.append(f"- {answer}, on {group.device}: the weights stored in fp16 take {ratio:.2f}x the bytes of "
                     f"fp32{effect}.")
    return "\n".join(lines) or "- Not measured: no run in this store recorded its model's size."


def speed(groups, verdicts: Callable, maps: list[tuple[str, dict]] = ()) -> str:
    """The training runs' throughput against fp32, then where each variant pays
    by size on each device that has a crossover map (`maps`: run id, map)."""
    lines = []
    for group in groups:
        rows = verdicts(group)
        if rows:
            found = ", ".join(f"{v.precision} {v.throughput.estimate:.2f}x ({speed_word(v.throughput)})" for v in rows)
            lines.append(f"- On {group.device}: throughput against fp32: {found}.")
    for run_id, found in maps:
        lines.append(f"- Crossover map on {found['device']} ({found['software']}; benchmark run {run_id}): "
                     f"{'; '.join(sentences(found))}.")
    on_gpu = any(g.device.startswith("cuda") for g in groups) or any(m["device"].startswith("cuda") for _, m in maps)
    if not on_gpu:
        lines.insert(0, "- On a GPU: not measured, no GPU runs or crossover map in this store "
                        "(benchmarks/gpu_check.sh measures them where one is lent). What the CPUs measured:")
    return "\n".join(lines) or "- Not measured: no group has fp32 runs to compare with."


def accuracy(groups, verdicts: Callable) -> str:
    lines = []
    for group in groups:
        rows = verdicts(group)
        if not rows:
            continue
        kept = [v.precision for v in rows if v.accuracy.contains(0.0) or
                (v.accuracy.has_interval and v.accuracy.low > 0)]
        told = [v for v in rows if v.accuracy.has_interval]
        found = "; ".join(f"{v.precision} {accuracy_word(v.accuracy)}" for v in rows)
        lines.append(f"- On {group.device}: {len(kept)} of {len(told)} variants with enough seeds kept fp32's test "
                     f"accuracy (95% CI of the difference contains zero, or lies above it). Differences: {found}.")
    return "\n".join(lines) or "- Not measured: no group has fp32 runs to compare with."


def pure_half(groups, verdicts: Callable, mean: Callable) -> str:
    lines = []
    for group in groups:
        rows = {v.precision: v for v in verdicts(group) if v.precision in TRUE_HALF}
        if not rows:
            continue
        lost = {name: mean([run.lost_updates for run in group.runs[name].values() if run.lost_updates is not None])
                for name in ("fp32", *rows) if name in group.runs}
        parts = []
        for name, verdict in rows.items():
            share = f"lost {lost[name]:.1%} of its non-zero updates to rounding" if lost.get(name) is not None else \
                "recorded no lost-update share"
            parts.append(f"{name} {share}, test accuracy against fp32 {accuracy_word(verdict.accuracy)}")
        reference = f" (fp32: {lost['fp32']:.4%})" if lost.get("fp32") is not None else ""
        lower = any(v.accuracy.has_interval and v.accuracy.high < 0 for v in rows.values())
        kept = all(v.accuracy.has_interval and v.accuracy.high >= 0 for v in rows.values())
        answer = "No" if lower else "Here, yes" if kept else "Undecided (too few seeds)"
        lines.append(f"- {answer}, on {group.device}: {'; '.join(parts)}{reference}. Without fp32 master weights "
                     "an update smaller than half the weight's spacing in half precision is rounded away.")
    return "\n".join(lines) or ("- Not measured: no fp16-true or bf16-true runs in this store "
                                "(dvc exp run -S precision=bf16-true).")


def section(groups, verdicts: Callable, maps: list[tuple[str, dict]] = ()) -> str:
    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    return "\n".join([
        "## The claims, measured", "",
        "Each claim of the mixed-precision tutorial, answered from the runs in this store, on the device named.", "",
        "**Half precision halves storage.**", storage(groups, mean), "",
        "**It is faster on GPUs.**", speed(groups, verdicts, maps), "",
        "**It keeps accuracy \"in many cases\".**", accuracy(groups, verdicts), "",
        "**Half precision in general, not only mixed.**", pure_half(groups, verdicts, mean), "",
    ])
