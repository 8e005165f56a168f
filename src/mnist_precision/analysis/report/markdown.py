"""The report's Markdown: the claims, then per group its verdict, tables and figures."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from mnist_precision.analysis.report import claims
from mnist_precision.analysis.report import figures as draw
from mnist_precision.analysis.report.comparison import (
    Group,
    ReportError,
    Verdict,
    collect,
    crossover_maps,
    group_runs,
    verdicts,
)
from mnist_precision.analysis.stats import Interval
from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.precision_table import BASELINE
from mnist_precision.tracking.store import configure


def _interval(interval: Interval, fmt: str) -> str:
    if not interval.has_interval:
        return f"{interval.estimate:{fmt}} (no interval: {interval.method})"
    return f"{interval.estimate:{fmt}} [{interval.low:{fmt}}, {interval.high:{fmt}}]"


def verdict_table(group: Group) -> str:
    rows = verdicts(group)
    if not rows:
        return f"No {BASELINE} runs in this group: nothing to compare against.\n"
    lines = [
        "| precision vs fp32 | seeds | test accuracy difference (95% CI) | within noise? "
        "| throughput ratio (95% CI) | device |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for v in rows:
        lines.append(
            f"| {v.precision} | {v.seeds} vs {len(group.runs[BASELINE])} | {_interval(v.accuracy, '+.4f')} "
            f"| {v.within_noise()} | {_interval(v.throughput, '.2f')}× | {group.device} |"
        )
    notes = sorted({v.accuracy.method for v in rows} | {v.throughput.method for v in rows})
    sentences = [f"- {baseline_sentence(group)}"] + [f"- {verdict_sentence(group, v)}" for v in rows]
    return "\n".join(lines) + "\n\nIntervals: " + "; ".join(notes) + ".\n\n" + "\n".join(sentences) + "\n"


NOISE = {"yes": "within noise", "no": "not within noise", "too few seeds to tell": "too few seeds to tell"}


def verdict_sentence(group: Group, verdict: Verdict) -> str:
    """The verdict in words: in the report, and as the description of the variant's parent run."""
    return (
        f"{verdict.precision} against {BASELINE} ({group.optimizer}; {verdict.seeds} vs "
        f"{len(group.runs[BASELINE])} seeds): test accuracy {_interval(verdict.accuracy, '+.4f')}, "
        f"{NOISE[verdict.within_noise()]}; throughput {_interval(verdict.throughput, '.2f')}×; on {group.device}."
    )


def baseline_sentence(group: Group) -> str:
    accuracy = statistics.fmean(group.values(BASELINE, "test_accuracy").values())
    return (
        f"{BASELINE}, the reference ({group.optimizer}; {len(group.runs[BASELINE])} seeds): mean test accuracy "
        f"{accuracy:.4f}; on {group.device}."
    )


def group_section(index: int, group: Group, out_dir: Path) -> tuple[str, list[Path]]:
    """The group's Markdown section, and the figures it shows (written beside the report)."""
    figures, underflow_caption = draw.draw(group, index, out_dir)
    seeds = "; ".join(f"{p}: seeds {', '.join(map(str, sorted(group.runs[p])))}" for p in group.precisions())
    lines = [f"## Group {index}: {group.title()}", "", f"Runs: {seeds}."]
    if group.superseded:
        lines.append(f"{group.superseded} older run(s) of a precision and seed already present were left out.")
    lines += [
        "",
        "### Verdict",
        "",
        verdict_table(group),
        "### Test accuracy",
        "",
        *accuracy_table(group),
        "",
        f"![test accuracy]({figures['accuracy'].name})",
        "",
        "### Training loss per epoch",
        "",
        f"![training loss]({figures['loss'].name})",
        "",
        "### Throughput, memory and storage",
        "",
        *costs_table(group),
        "",
        f"![throughput, memory and storage]({figures['costs'].name})",
        "",
        "### Numerics",
        "",
        f"Activation gradients of one sampled step against fp16's range ({underflow_caption}):",
        "",
        f"![underflow]({figures['underflow'].name})",
        "",
        f"![loss scale]({figures['loss-scale'].name})",
        "",
        f"![lost updates]({figures['lost-updates'].name})",
        "",
        f"![update bias]({figures['update-bias'].name})",
        "",
        f"![second moment]({figures['second-moment'].name})",
        "",
        "Shares in the last epoch, mean across seeds:",
        "",
        *numerics_table(group),
        "",
    ]
    return "\n".join(lines), list(figures.values())


def accuracy_table(group: Group) -> list[str]:
    lines = ["| precision | seeds | mean | per seed |", "| --- | ---: | ---: | --- |"]
    for p in group.precisions():
        values = group.values(p, "test_accuracy")
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(values.items()))
        lines.append(f"| {p} | {len(values)} | {statistics.fmean(values.values()):.4f} | {per_seed} |")
    return lines


def costs_table(group: Group) -> list[str]:
    lines = [
        "| precision | samples/s (mean) | peak memory MiB (mean) | model bytes fp32 | model bytes fp16 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for p in group.precisions():
        runs = list(group.runs[p].values())
        peak = group.values(p, "peak_memory_mb")
        lines.append(
            f"| {p} | {statistics.fmean(r.samples_per_s for r in runs):,.0f} | "
            f"{statistics.fmean(peak.values()) if peak else float('nan'):,.0f} | "
            f"{runs[0].model_bytes_fp32 or 0:,.0f} | {runs[0].model_bytes_fp16 or 0:,.0f} |"
        )
    return lines


def numerics_table(group: Group) -> list[str]:
    lines = [
        "| variant | updates lost to rounding | activation gradients below 2^-24 | "
        "the same, times the run's loss scale | update bias | AdamW's second moment flushed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in group.precisions():
        cells = []
        for field in (
            "lost_updates",
            "act_grads_flushed",
            "act_grads_scaled_flushed",
            "update_bias",
            "second_moment_flushed",
        ):
            values = list(group.values(p, field).values())
            number = "{:+.3f}" if field == "update_bias" else "{:.4%}"
            cells.append(number.format(statistics.fmean(values)) if values else "not recorded")
        lines.append(f"| {p} | {' | '.join(cells)} |")
    return lines


def write_report(experiment: str, out: Path) -> tuple[str, list[Path], list[Group]]:
    """Build the report from the store; return its Markdown, figure paths and groups."""
    store = configure()
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(
            f"no MLflow experiment named {experiment!r} in {store.uri}: run the pipeline first "
            "(dvc repro, or dvc exp run --queue ... && dvc queue start)"
        )
    client = MlflowClient()
    groups = group_runs(collect(client, found.experiment_id))
    if not groups:
        raise ReportError(f"experiment {experiment!r} has no finished runs with test metrics: run the pipeline first")
    sections, figures = [], []
    for index, group in enumerate(groups, start=1):
        section, paths_ = group_section(index, group, out.parent)
        sections.append(section)
        figures += paths_
    head = [
        f"# fp32 or reduced precision? MLflow experiment `{experiment}`",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} "
        f"from {sum(len(s) for g in groups for s in g.runs.values())} "
        f"finished runs in {store.uri.split('?')[0]}. Runs from different devices or configurations are never "
        "averaged together: each group below is one device and one configuration.",
        "",
        "A difference is within noise when its 95% confidence interval across seeds contains zero. "
        "Too few seeds (fewer than 2 per precision) give an estimate without an interval.",
        "",
    ]
    maps = crossover_maps(client, experiment)
    markdown = "\n".join(head + [claims.section(groups, verdicts, maps)] + sections)
    atomic_write_bytes(out, markdown.encode())
    return markdown, figures, groups
