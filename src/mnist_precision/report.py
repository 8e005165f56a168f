"""The comparison report: every precision against fp32, across seeds, from the MLflow runs.

    mnist-precision report            # or: python -m mnist_precision.report

Reads the finished runs of the experiment, groups them by device and
configuration (runs from different devices or configurations are never
averaged together), and within a group by precision and seed. Writes
reports/precision.md with PNG figures beside it, prints the verdict tables,
and logs the report to MLflow as a run tagged as a summary, in its own
experiment `<experiment>-reports`, so that it never mixes with training runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from . import claims, paths  # noqa: E402
from .atomic import atomic_path, atomic_write_bytes  # noqa: E402
from .diagnostics import FP16_SMALLEST_NORMAL, FP16_SMALLEST_SUBNORMAL  # noqa: E402
from .errors import UserError  # noqa: E402
from .params import load  # noqa: E402
from .precisions import BASELINE, NAMES  # noqa: E402
from .stats import Interval, difference_of_means, ratio_of_means  # noqa: E402
from .tracking.lifecycle import run_scope  # noqa: E402
from .tracking.store import configure, get_or_create_experiment  # noqa: E402

SUMMARY_TAG = "mnist_precision.run_type"
# What makes two runs comparable, besides precision and seed.
CONFIG_PARAMS = ("train.hidden", "train.batch_size", "train.epochs", "train.lr", "train.compile")


class ReportError(UserError):
    """There is nothing to report on."""


@dataclass
class RunRecord:
    run_id: str
    precision: str
    seed: int
    device: str
    config: tuple[tuple[str, str], ...]
    test_accuracy: float
    samples_per_s: float
    peak_memory_mb: float | None
    peak_memory_kind: str | None
    model_bytes_fp32: float | None
    model_bytes_fp16: float | None
    fp16_stored_test_accuracy: float | None = None
    lost_updates: float | None = None  # the last epoch's share
    # The last epoch's share of activation gradients below 2^-24, unscaled and times the run's loss scale.
    act_grads_flushed: float | None = None
    act_grads_scaled_flushed: float | None = None
    loss_by_epoch: dict[int, float] = field(default_factory=dict)
    lost_updates_by_epoch: dict[int, float] = field(default_factory=dict)
    loss_scale_by_step: dict[int, float] = field(default_factory=dict)


@dataclass
class Group:
    device: str
    config: tuple[tuple[str, str], ...]
    runs: dict[str, dict[int, RunRecord]] = field(default_factory=lambda: defaultdict(dict))
    superseded: int = 0  # older runs of a (precision, seed) already present

    def title(self) -> str:
        return f"{self.device}; " + ", ".join(f"{k.removeprefix('train.')} {v}" for k, v in self.config)

    def precisions(self) -> list[str]:
        """The variants, in the order of the precision table."""
        def order(variant: str) -> tuple[int, str]:
            base = variant.split(" ")[0]
            return (NAMES.index(base) if base in NAMES else len(NAMES), variant)
        return sorted(self.runs, key=order)

    def values(self, precision: str, metric: str) -> dict[int, float]:
        return {seed: getattr(run, metric) for seed, run in self.runs[precision].items()
                if getattr(run, metric) is not None}


@dataclass
class Verdict:
    precision: str
    seeds: int
    accuracy: Interval
    throughput: Interval

    def within_noise(self) -> str:
        inside = self.accuracy.contains(0.0)
        return "too few seeds to tell" if inside is None else "yes" if inside else "no"


def collect(client: MlflowClient, experiment_id: str) -> list[RunRecord]:
    records = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        if run.data.tags.get(SUMMARY_TAG) == "summary" or "test_accuracy" not in metrics:
            continue
        memory_kind = next((k for k in ("peak_gpu_memory_mb", "peak_rss_mb") if k in metrics), None)

        def history(key: str) -> dict[int, float]:
            return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key) if m.step >= 1}

        records.append(RunRecord(
            run_id=run.info.run_id,
            precision=variant(params),
            seed=int(params["seed"]),
            device=device_label(params),
            config=tuple((key, params.get(key, "?")) for key in CONFIG_PARAMS),
            test_accuracy=metrics["test_accuracy"],
            samples_per_s=metrics["samples_per_s"],
            peak_memory_mb=metrics.get(memory_kind) if memory_kind else None,
            peak_memory_kind=memory_kind,
            model_bytes_fp32=metrics.get("model_bytes_fp32"),
            model_bytes_fp16=metrics.get("model_bytes_fp16"),
            fp16_stored_test_accuracy=metrics.get("fp16_stored_test_accuracy"),
            lost_updates=metrics.get("lost_updates"),
            act_grads_flushed=metrics.get("underflow_act_grads_flushed"),
            act_grads_scaled_flushed=metrics.get("underflow_act_grads_scaled_flushed"),
            loss_by_epoch=history("train_loss"),
            lost_updates_by_epoch=history("lost_updates") if "lost_updates" in metrics else {},
            loss_scale_by_step=history("loss_scale") if "loss_scale" in metrics else {},
        ))
    return records


def variant(params: dict[str, str]) -> str:
    """The precision, and its loss scale where it is not the default."""
    loss_scale = params.get("loss_scale", "dynamic")
    return params["precision"] if loss_scale == "dynamic" else f"{params['precision']} (loss_scale {loss_scale})"


def device_label(params: dict[str, str]) -> str:
    """The device, what it offers for each precision, and the threads the run
    used: runs on CPUs of other features, or with other thread counts, are
    other groups, since these decide the speed."""
    offers = (f"compute capability {params['cuda_compute_capability']}" if "cuda_compute_capability" in params
              else f"{params['cpu_capability']}, features {params.get('cpu_features', 'none')}"
              if "cpu_capability" in params else "features not recorded")
    threads = f", {params['threads']} threads" if "threads" in params else ""
    return f"{params.get('device_resolved', '?')} ({params.get('device_name', 'unknown device')}; {offers}{threads})"


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Newest first in `records`: an older run of the same precision and seed is superseded."""
    groups: dict[tuple, Group] = {}
    for record in records:
        group = groups.setdefault((record.device, record.config), Group(record.device, record.config))
        if record.seed in group.runs[record.precision]:
            group.superseded += 1
        else:
            group.runs[record.precision][record.seed] = record
    return list(groups.values())


def verdicts(group: Group) -> list[Verdict]:
    if BASELINE not in group.runs:
        return []
    return [
        Verdict(precision, len(group.runs[precision]),
                difference_of_means(group.values(precision, "test_accuracy"), group.values(BASELINE, "test_accuracy")),
                ratio_of_means(group.values(precision, "samples_per_s"), group.values(BASELINE, "samples_per_s")))
        for precision in group.precisions() if precision != BASELINE
    ]


def _interval(interval: Interval, fmt: str) -> str:
    if not interval.has_interval:
        return f"{interval.estimate:{fmt}} (no interval: {interval.method})"
    return f"{interval.estimate:{fmt}} [{interval.low:{fmt}}, {interval.high:{fmt}}]"


def verdict_table(group: Group) -> str:
    rows = verdicts(group)
    if not rows:
        return f"No {BASELINE} runs in this group: nothing to compare against.\n"
    lines = ["| precision vs fp32 | seeds | test accuracy difference (95% CI) | within noise? "
             "| throughput ratio (95% CI) | device |",
             "| --- | ---: | --- | --- | --- | --- |"]
    for v in rows:
        lines.append(f"| {v.precision} | {v.seeds} vs {len(group.runs[BASELINE])} | {_interval(v.accuracy, '+.4f')} "
                     f"| {v.within_noise()} | {_interval(v.throughput, '.2f')}× | {group.device} |")
    notes = sorted({v.accuracy.method for v in rows} | {v.throughput.method for v in rows})
    return "\n".join(lines) + "\n\nIntervals: " + "; ".join(notes) + ".\n"


def plot_loss(group: Group, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for precision in group.precisions():
        curves = [run.loss_by_epoch for run in group.runs[precision].values() if run.loss_by_epoch]
        if not curves:
            continue
        x = sorted(set.intersection(*(set(c) for c in curves)))  # epochs every seed reached
        per_epoch = [[c[epoch] for c in curves] for epoch in x]
        axes.plot(x, [statistics.fmean(v) for v in per_epoch], marker="o", label=f"{precision} (mean of {len(curves)} seeds)")
        axes.fill_between(x, [min(v) for v in per_epoch], [max(v) for v in per_epoch], alpha=0.2)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set(xlabel="epoch", ylabel="training loss", title="Training loss per epoch (band: min to max across seeds)")
    axes.legend()
    _save(figure, path)


def plot_accuracy(group: Group, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for i, precision in enumerate(group.precisions()):
        values = list(group.values(precision, "test_accuracy").values())
        axes.scatter([i] * len(values), values, alpha=0.7, label="a seed" if i == 0 else None, color="tab:blue")
        axes.hlines(statistics.fmean(values), i - 0.25, i + 0.25, color="black", label="mean" if i == 0 else None)
    axes.set_xticks(range(len(group.precisions())), group.precisions())
    axes.set(ylabel="test accuracy", title="Test accuracy per precision, every seed")
    axes.legend()
    _save(figure, path)


def plot_costs(group: Group, path: Path) -> None:
    precisions = group.precisions()
    figure, (speed, memory, storage) = plt.subplots(1, 3, figsize=(12, 4))
    speed.bar(precisions, [statistics.fmean(group.values(p, "samples_per_s").values()) for p in precisions], color="tab:green")
    speed.set(ylabel="samples/s (mean across seeds)", title="Training throughput")
    peaks = [group.values(p, "peak_memory_mb") for p in precisions]
    memory.bar(precisions, [statistics.fmean(v.values()) if v else 0 for v in peaks], color="tab:orange")
    kind = next((r.peak_memory_kind for runs in group.runs.values() for r in runs.values() if r.peak_memory_kind), "")
    memory.set(ylabel=f"MiB ({kind})", title="Peak memory")
    sizes = [r for runs in group.runs.values() for r in runs.values() if r.model_bytes_fp32]
    if sizes:
        storage.bar(["stored fp32", "stored fp16"],
                    [sizes[0].model_bytes_fp32 / 1024, sizes[0].model_bytes_fp16 / 1024], color="tab:purple")
    storage.set(ylabel="KiB", title="Model size on disk")
    figure.tight_layout()
    _save(figure, path)


def _no_data(axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no run in this group recorded {what}", ha="center", va="center", transform=axes.transAxes)


def plot_lost_updates(group: Group, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 4))
    plotted = False
    for precision in group.precisions():
        curves = [run.lost_updates_by_epoch for run in group.runs[precision].values() if run.lost_updates_by_epoch]
        if curves:
            x = sorted(set.intersection(*(set(c) for c in curves)))
            axes.plot(x, [statistics.fmean(c[e] for c in curves) for e in x], marker="o", label=precision)
            plotted = True
    if plotted:
        axes.set_yscale("symlog", linthresh=1e-5)
        axes.legend()
    else:
        _no_data(axes, "lost updates")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set(xlabel="epoch", ylabel="share of non-zero updates lost",
             title="Updates rounded away by the stored weights' precision")
    _save(figure, path)


def plot_loss_scale(group: Group, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 4))
    plotted = False
    for precision in group.precisions():
        for seed, run in sorted(group.runs[precision].items()):
            if run.loss_scale_by_step and set(run.loss_scale_by_step.values()) != {1.0}:
                steps = sorted(run.loss_scale_by_step)
                axes.plot(steps, [run.loss_scale_by_step[s] for s in steps], label=f"{precision}, seed {seed}")
                plotted = True
    if plotted:
        axes.set_yscale("log", base=2)
        axes.legend()
    else:
        _no_data(axes, "a loss scale other than 1")
    axes.set(xlabel="step", ylabel="loss scale", title="The GradScaler's loss scale on the sampled steps")
    _save(figure, path)


def histogram_run(group: Group) -> RunRecord | None:
    """The run whose sampled step the underflow figure shows: fp16's lowest
    seed (its loss scale shows what scaling moves), else the first variant's."""
    for precision in ("fp16", *group.precisions()):
        if precision in group.runs:
            return group.runs[precision][min(group.runs[precision])]
    return None


def plot_underflow(group: Group, path: Path) -> str:
    """Micikevicius et al. (2018), Figure 3, for this group: the activation
    gradients of one sampled step against fp16's range. Returns the caption."""
    figure, axes = plt.subplots(figsize=(7.5, 4))
    run = histogram_run(group)
    rows = _download_json(run.run_id, "plots/underflow_histogram.json") if run else None
    caption = "no run in this group recorded the histogram"
    if rows:
        x = [row["log2_magnitude"] for row in rows]
        scale = rows[0]["loss_scale"]
        shift = math.log2(scale)
        axes.bar(x, [row["share"] for row in rows], width=0.9, color="tab:blue", label="fp32 values")
        if shift:
            axes.step([v + shift for v in x], [row["share"] for row in rows], where="mid", color="tab:red",
                      label=f"times the loss scale {scale:g}")
        axes.axvspan(min(x) - 1, math.log2(FP16_SMALLEST_SUBNORMAL), color="grey", alpha=0.3,
                     label="below 2^-24: zero in fp16")
        axes.axvspan(math.log2(FP16_SMALLEST_SUBNORMAL), math.log2(FP16_SMALLEST_NORMAL), color="orange", alpha=0.2,
                     label="2^-24 to 2^-14: fp16 subnormals")
        axes.axvline(math.log2(65504), color="black", linestyle="--", label="fp16's largest value")
        axes.legend(fontsize=8)
        caption = f"run {run.run_id[:8]} ({run.precision}, seed {run.seed}), its last sampled step"
    else:
        _no_data(axes, "the histogram")
    axes.set(xlabel="log2 |activation gradient|", ylabel="share of non-zero values",
             title="Activation gradients against fp16's range")
    _save(figure, path)
    return caption


def _download_json(run_id: str, artifact: str):
    try:
        # MLflow's progress bar for one small file would only clutter the report's output.
        with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    except MlflowException:  # a run from before the diagnostics
        return None
    return json.loads(Path(local).read_text())


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def group_section(index: int, group: Group, out_dir: Path) -> tuple[str, list[Path]]:
    figures = [out_dir / f"group{index}-{name}.png"
               for name in ("loss", "accuracy", "costs", "underflow", "loss-scale", "lost-updates")]
    for plot, path in zip((plot_loss, plot_accuracy, plot_costs), figures):
        plot(group, path)
    underflow_caption = plot_underflow(group, figures[3])
    plot_loss_scale(group, figures[4])
    plot_lost_updates(group, figures[5])
    seeds = "; ".join(f"{p}: seeds {', '.join(map(str, sorted(group.runs[p])))}" for p in group.precisions())
    lines = [f"## Group {index}: {group.title()}", "", f"Runs: {seeds}."]
    if group.superseded:
        lines.append(f"{group.superseded} older run(s) of a precision and seed already present were left out.")
    lines += ["", "### Verdict", "", verdict_table(group),
              "### Test accuracy", "",
              "| precision | seeds | mean | per seed |", "| --- | ---: | ---: | --- |"]
    for p in group.precisions():
        values = group.values(p, "test_accuracy")
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(values.items()))
        lines.append(f"| {p} | {len(values)} | {statistics.fmean(values.values()):.4f} | {per_seed} |")
    lines += ["", f"![test accuracy]({figures[1].name})", "", "### Training loss per epoch", "",
              f"![training loss]({figures[0].name})", "", "### Throughput, memory and storage", "",
              "| precision | samples/s (mean) | peak memory MiB (mean) | model bytes fp32 | model bytes fp16 |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for p in group.precisions():
        runs = list(group.runs[p].values())
        peak = group.values(p, "peak_memory_mb")
        lines.append(f"| {p} | {statistics.fmean(r.samples_per_s for r in runs):,.0f} | "
                     f"{statistics.fmean(peak.values()) if peak else float('nan'):,.0f} | "
                     f"{runs[0].model_bytes_fp32 or 0:,.0f} | {runs[0].model_bytes_fp16 or 0:,.0f} |")
    lines += ["", f"![throughput, memory and storage]({figures[2].name})", "",
              "### Numerics", "",
              f"Activation gradients of one sampled step against fp16's range ({underflow_caption}):", "",
              f"![underflow]({figures[3].name})", "", f"![loss scale]({figures[4].name})", "",
              f"![lost updates]({figures[5].name})", "",
              "Shares in the last epoch, mean across seeds:", "",
              "| variant | updates lost to rounding | activation gradients below 2^-24 | "
              "the same, times the run's loss scale |",
              "| --- | ---: | ---: | ---: |"]
    for p in group.precisions():
        cells = []
        for metric in ("lost_updates", "act_grads_flushed", "act_grads_scaled_flushed"):
            values = [v for v in group.values(p, metric).values()]
            cells.append(f"{statistics.fmean(values):.4%}" if values else "not recorded")
        lines.append(f"| {p} | {' | '.join(cells)} |")
    lines.append("")
    return "\n".join(lines), figures


def write_report(experiment: str, out: Path) -> tuple[str, list[Path], list[Group]]:
    """Build the report from the store; return its Markdown, figure paths and groups."""
    store = configure()
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no MLflow experiment named {experiment!r} in {store.uri}: run the pipeline first "
                          "(dvc repro, or dvc exp run --queue ... && dvc queue start)")
    groups = group_runs(collect(MlflowClient(), found.experiment_id))
    if not groups:
        raise ReportError(f"experiment {experiment!r} has no finished runs with test metrics: run the pipeline first")
    sections, figures = [], []
    for index, group in enumerate(groups, start=1):
        section, paths_ = group_section(index, group, out.parent)
        sections.append(section)
        figures += paths_
    head = [f"# fp32 or reduced precision? MLflow experiment `{experiment}`", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from {sum(len(s) for g in groups for s in g.runs.values())} "
            f"finished runs in {store.uri.split('?')[0]}. Runs from different devices or configurations are never "
            "averaged together: each group below is one device and one configuration.", "",
            "A difference is within noise when its 95% confidence interval across seeds contains zero. "
            "Too few seeds (fewer than 2 per precision) give an estimate without an interval.", ""]
    markdown = "\n".join(head + [claims.section(groups, verdicts)] + sections)
    atomic_write_bytes(out, markdown.encode())
    return markdown, figures, groups


def log_summary(experiment: str, report: Path, figures: list[Path]) -> str:
    store = configure()
    summary_experiment = get_or_create_experiment(f"{experiment}-reports", store)
    with run_scope(system_metrics=False, experiment_id=summary_experiment, run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={SUMMARY_TAG: "summary", "report.source_experiment": experiment}) as run:
        mlflow.log_artifact(str(report), artifact_path="report")
        for figure in figures:
            mlflow.log_artifact(str(figure), artifact_path="report")
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="the MLflow experiment (default: mlflow.experiment of params.yaml)")
    parser.add_argument("--out", type=Path, default=Path("reports/precision.md"), help="the Markdown report to write")
    args = parser.parse_args(argv)
    experiment = args.experiment or load(paths.PARAMS).mlflow_experiment
    markdown, figures, groups = write_report(experiment, args.out)
    for index, group in enumerate(groups, start=1):
        print(f"Group {index}: {group.title()}")
        print(verdict_table(group))
    run_id = log_summary(experiment, args.out, figures)
    print(f"Wrote {args.out} and {len(figures)} figures; logged as summary run {run_id} "
          f"in MLflow experiment '{experiment}-reports'.")


if __name__ == "__main__":
    from .entry import run_stage

    run_stage("report", main)
