"""The mixed-precision tutorial's claims, each answered from the runs of one device.

The tutorial this project started from says that half precision halves
storage, is faster on GPUs, keeps accuracy "in many cases", and speaks of half
precision in general, not only of mixed precision. Each answer here is
generated from the measured numbers with the thresholds below; no sentence is
written for one outcome.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from mnist_precision.analysis.crossover.record import CrossoverMap
from mnist_precision.analysis.crossover.verdict import sentences
from mnist_precision.analysis.stats import FASTER, SLOWER, Interval
from mnist_precision.base.precision_table import BASELINE, PRECISIONS

HALF_STORAGE = 0.55  # stored bytes at most this share of fp32's: storage is halved
UNBIASED = 0.05  # an update bias smaller than this: the updates are applied on average


def speed_word(ratio: Interval) -> str:
    if ratio.low is not None and ratio.high is not None:
        return "faster" if ratio.low > 1 else "slower" if ratio.high < 1 else "no measurable difference"
    return "faster" if ratio.estimate > FASTER else "slower" if ratio.estimate < SLOWER else "about the same"


def accuracy_word(difference: Interval) -> str:
    inside = difference.contains(0.0)
    if inside is None or difference.low is None or difference.high is None:
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
        stored = [
            run.fp16_stored_test_accuracy - run.test_accuracy
            for run in runs
            if run.fp16_stored_test_accuracy is not None
        ]
        answer = "Yes" if ratio <= HALF_STORAGE else "No"
        effect = (
            f"; the fp16-stored copy's test accuracy differs by {mean(stored):+.4f} on average "
            f"(largest {max(stored, key=abs):+.4f}, {len(stored)} runs)"
            if stored
            else ""
        )
        lines.append(
            f"- {answer}, on {group.device}: the weights stored in fp16 take {ratio:.2f}x the bytes of fp32{effect}."
        )
    return "\n".join(lines) or "- Not measured: no run in this store recorded its model's size."


def speed(groups, verdicts: Callable, maps: Sequence[tuple[str, CrossoverMap]] = ()) -> str:
    """The training runs' throughput against fp32, then where each variant pays
    by size on each device that has a crossover map (`maps`: run id, map)."""
    lines = []
    for group in groups:
        rows = verdicts(group)
        if rows:
            found = ", ".join(f"{v.precision} {v.throughput.estimate:.2f}x ({speed_word(v.throughput)})" for v in rows)
            lines.append(f"- On {group.device}: throughput against fp32: {found}.")
    for run_id, crossover in maps:
        lines.append(
            f"- Crossover map on {crossover.device} ({crossover.software}; benchmark run {run_id}): "
            f"{'; '.join(sentences(crossover))}."
        )
    on_gpu = any(g.device.startswith("cuda") for g in groups) or any(m.device.startswith("cuda") for _, m in maps)
    if not on_gpu:
        lines.insert(
            0,
            "- On a GPU: not measured, no GPU runs or crossover map in this store "
            "(benchmarks/gpu_check.sh measures them where one is lent). What the CPUs measured:",
        )
    return "\n".join(lines) or "- Not measured: no group has fp32 runs to compare with."


def accuracy(groups, verdicts: Callable) -> str:
    lines = []
    for group in groups:
        rows = verdicts(group)
        if not rows:
            continue
        kept = [
            v.precision for v in rows if v.accuracy.contains(0.0) or (v.accuracy.has_interval and v.accuracy.low > 0)
        ]
        told = [v for v in rows if v.accuracy.has_interval]
        found = "; ".join(f"{v.precision} {accuracy_word(v.accuracy)}" for v in rows)
        lines.append(
            f"- On {group.device}: {len(kept)} of {len(told)} variants with enough seeds kept fp32's test "
            f"accuracy (95% CI of the difference contains zero, or lies above it). Differences: {found}."
        )
    return "\n".join(lines) or "- Not measured: no group has fp32 runs to compare with."


def pure_half(groups, verdicts: Callable, mean: Callable) -> str:
    """Per group (so per optimizer): the half-stored variants' lost updates,
    update bias and accuracy, then what stochastic rounding changed."""
    lines = []
    for group in groups:
        rows = {
            v.precision: v
            for v in verdicts(group)
            if v.precision in PRECISIONS and PRECISIONS[v.precision].param_dtype != "float32"
        }
        if not rows:
            continue
        figures = {
            name: {
                key: mean([getattr(run, key) for run in group.runs[name].values()])
                for key in ("lost_updates", "update_bias", "second_moment_flushed")
            }
            for name in (BASELINE, *rows)
            if name in group.runs
        }
        reference = figures.get(BASELINE, {}).get("lost_updates")
        lower = any(v.accuracy.has_interval and v.accuracy.high < 0 for v in rows.values())
        kept = all(v.accuracy.has_interval and v.accuracy.high >= 0 for v in rows.values())
        answer = "No" if lower else "Here, yes" if kept else "Undecided (too few seeds)"
        parts = "; ".join(half_variant(name, verdict, figures[name]) for name, verdict in rows.items())
        lines.append(
            f"- {answer}, on {group.device} with {group.optimizer}: {parts}"
            f"{f' (fp32: {reference:.4%})' if reference is not None else ''}. Without fp32 master "
            "weights an update smaller than half the weight's spacing in half precision is rounded "
            "away, unless it is rounded stochastically."
        )
        lines += [f"  - {sentence}" for sentence in stochastic_rounding(rows, figures)]
    return "\n".join(lines) or (
        "- Not measured: no fp16-true, bf16-true or -sr runs in this store (dvc exp run -S precision=bf16-true)."
    )


def half_variant(name: str, verdict, figures: dict) -> str:
    lost, bias, moment = figures["lost_updates"], figures["update_bias"], figures["second_moment_flushed"]
    said = [
        f"lost {lost:.1%} of its non-zero updates to rounding" if lost is not None else "recorded no lost-update share"
    ]
    if bias is not None:
        said.append(f"update bias {bias:+.3f}")
    if moment is not None:
        said.append(f"{moment:.1%} of AdamW's second moment flushed to zero")
    return f"{name} {', '.join(said)}, test accuracy against fp32 {accuracy_word(verdict.accuracy)}"


def stochastic_rounding(rows: dict, figures: dict) -> list[str]:
    """For each "-sr" variant beside its round-to-nearest twin: is the update
    unbiased (|bias| < UNBIASED), and did it keep more accuracy?"""
    sentences = []
    for name, verdict in rows.items():
        nearest = name.removesuffix("-sr")
        if not PRECISIONS[name].stochastic_rounding or nearest not in rows:
            continue
        bias, twin_bias = figures[name]["update_bias"], figures[nearest]["update_bias"]
        if bias is None or twin_bias is None:
            continue
        unbiased = "applied on average" if abs(bias) < UNBIASED else "still biased"
        closer = verdict.accuracy.estimate - rows[nearest].accuracy.estimate
        sentences.append(
            f"Stochastic rounding: {name}'s update bias {bias:+.3f} against {nearest}'s "
            f"{twin_bias:+.3f} ({unbiased}: |bias| < {UNBIASED} counts as unbiased); its test "
            f"accuracy {'closer to' if closer > 0 else 'no closer to'} fp32's by {closer:+.4f}."
        )
    return sentences


def section(groups, verdicts: Callable, maps: Sequence[tuple[str, CrossoverMap]] = ()) -> str:
    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    return "\n".join(
        [
            "## The claims, measured",
            "",
            "Each claim of the mixed-precision tutorial, answered from the runs in this store, on the device named.",
            "",
            "**Half precision halves storage.**",
            storage(groups, mean),
            "",
            "**It is faster on GPUs.**",
            speed(groups, verdicts, maps),
            "",
            '**It keeps accuracy "in many cases".**',
            accuracy(groups, verdicts),
            "",
            "**Half precision in general, not only mixed.**",
            pure_half(groups, verdicts, mean),
            "",
        ]
    )
