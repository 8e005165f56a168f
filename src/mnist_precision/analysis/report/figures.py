"""The report's figures, one PNG per function, for one group of runs."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib.axis import Axis
from matplotlib.ticker import MaxNLocator

from mnist_precision.analysis.report.comparison import Group, RunRecord, download_json
from mnist_precision.base.figures import new_figure, save_png
from mnist_precision.core.diagnostics import FP16_SMALLEST_NORMAL, FP16_SMALLEST_SUBNORMAL

FIGURES = ("loss", "accuracy", "costs", "underflow", "loss-scale", "lost-updates", "update-bias", "second-moment")


def draw(group: Group, index: int, out_dir: Path) -> tuple[dict[str, Path], str]:
    """Every figure of the group, by name (FIGURES), and the underflow figure's caption."""
    paths = {name: out_dir / f"group{index}-{name}.png" for name in FIGURES}
    plot_loss(group, paths["loss"])
    plot_accuracy(group, paths["accuracy"])
    plot_costs(group, paths["costs"])
    caption = plot_underflow(group, paths["underflow"])
    plot_loss_scale(group, paths["loss-scale"])
    plot_lost_updates(group, paths["lost-updates"])
    plot_update_bias(group, paths["update-bias"])
    plot_second_moment(group, paths["second-moment"])
    return paths, caption


def plot_loss(group: Group, path: Path) -> None:
    figure, axes = new_figure(size=(6.5, 4))
    for precision in group.precisions():
        curves = [run.loss_by_epoch for run in group.runs[precision].values() if run.loss_by_epoch]
        if not curves:
            continue
        x = sorted(set.intersection(*(set(c) for c in curves)))  # epochs every seed reached
        per_epoch = [[c[epoch] for c in curves] for epoch in x]
        axes.plot(
            x, [statistics.fmean(v) for v in per_epoch], marker="o", label=f"{precision} (mean of {len(curves)} seeds)"
        )
        axes.fill_between(x, [min(v) for v in per_epoch], [max(v) for v in per_epoch], alpha=0.2)
    integer_ticks(axes.xaxis)
    axes.set(xlabel="epoch", ylabel="training loss", title="Training loss per epoch (band: min to max across seeds)")
    axes.legend()
    save_png(figure, path)


def integer_ticks(axis: Axis) -> None:
    """Whole numbers only on `axis` (its default locator, AutoLocator, is a MaxNLocator)."""
    locator = axis.get_major_locator()
    assert isinstance(locator, MaxNLocator)
    locator.set_params(integer=True)


def plot_accuracy(group: Group, path: Path) -> None:
    figure, axes = new_figure(size=(6.5, 4))
    for i, precision in enumerate(group.precisions()):
        values = list(group.values(precision, "test_accuracy").values())
        axes.scatter([i] * len(values), values, alpha=0.7, label="a seed" if i == 0 else None, color="tab:blue")
        axes.hlines(
            statistics.fmean(values), i - 0.25, i + 0.25, color="black", label="mean" if i == 0 else "_nolegend_"
        )
    axes.set_xticks(range(len(group.precisions())), group.precisions())
    axes.set(ylabel="test accuracy", title="Test accuracy per precision, every seed")
    axes.legend()
    save_png(figure, path)


def plot_costs(group: Group, path: Path) -> None:
    precisions = group.precisions()
    figure, (speed, memory, storage) = new_figure(1, 3, size=(12, 4))
    speed.bar(
        precisions, [statistics.fmean(group.values(p, "samples_per_s").values()) for p in precisions], color="tab:green"
    )
    speed.set(ylabel="samples/s (mean across seeds)", title="Training throughput")
    peaks = [group.values(p, "peak_memory_mb") for p in precisions]
    memory.bar(precisions, [statistics.fmean(v.values()) if v else 0 for v in peaks], color="tab:orange")
    kind = next((r.peak_memory_kind for runs in group.runs.values() for r in runs.values() if r.peak_memory_kind), "")
    memory.set(ylabel=f"MiB ({kind})", title="Peak memory")
    sizes = [
        (r.model_bytes_fp32, r.model_bytes_fp16)
        for runs in group.runs.values()
        for r in runs.values()
        if r.model_bytes_fp32 and r.model_bytes_fp16
    ]
    if sizes:
        storage.bar(["stored fp32", "stored fp16"], [sizes[0][0] / 1024, sizes[0][1] / 1024], color="tab:purple")
    storage.set(ylabel="KiB", title="Model size on disk")
    figure.tight_layout()
    save_png(figure, path)


def _no_data(axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no run in this group recorded {what}", ha="center", va="center", transform=axes.transAxes)


def plot_lost_updates(group: Group, path: Path) -> None:
    figure, axes = new_figure(size=(6.5, 4))
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
    integer_ticks(axes.xaxis)
    axes.set(
        xlabel="epoch",
        ylabel="share of non-zero updates lost",
        title="Updates rounded away by the stored weights' precision",
    )
    save_png(figure, path)


def _mean_curve(axes, curves: list[dict[int, float]], **style) -> bool:
    """The mean across seeds of per-epoch curves, over the epochs every seed reached; False if none."""
    curves = [c for c in curves if c]
    if not curves:
        return False
    x = sorted(set.intersection(*(set(c) for c in curves)))
    axes.plot(x, [statistics.fmean(c[e] for c in curves) for e in x], marker="o", **style)
    return True


def plot_update_bias(group: Group, path: Path) -> None:
    """Round-to-nearest against stochastic rounding: the update bias beside the lost updates, per epoch."""
    figure, (bias, lost) = new_figure(1, 2, size=(12, 4))
    plotted = False
    for precision in group.precisions():
        runs = group.runs[precision].values()
        style = {"label": precision, "linestyle": "--" if precision.split(" ")[0].endswith("-sr") else "-"}
        if _mean_curve(bias, [run.update_bias_by_epoch for run in runs], **style):
            _mean_curve(lost, [run.lost_updates_by_epoch for run in runs], **style)
            plotted = True
    if plotted:
        bias.axhline(0, color="black", linewidth=0.8)
        bias.legend()
        lost.legend()
    else:
        _no_data(bias, "an update bias")
    for axes in (bias, lost):
        integer_ticks(axes.xaxis)
    bias.set(
        xlabel="epoch", ylabel="update bias (-1: all lost, 0: unbiased)", title="The applied update against fp32's"
    )
    lost.set(
        xlabel="epoch", ylabel="share of non-zero updates lost", title="Updates lost (dashed: stochastic rounding)"
    )
    figure.tight_layout()
    save_png(figure, path)


def plot_second_moment(group: Group, path: Path) -> None:
    figure, axes = new_figure(size=(6.5, 4))
    seeds = {p: group.values(p, "second_moment_flushed") for p in group.precisions()}
    shares = {p: statistics.fmean(v.values()) for p, v in seeds.items() if v}
    if shares:
        axes.bar(list(shares), list(shares.values()), color="tab:red")
    else:
        _no_data(axes, "AdamW's second moment (optimizer: adamw)")
    axes.set(
        ylabel="share of non-zero values flushed to 0 (last epoch, mean across seeds)",
        title="AdamW's second moment as the stored dtype holds it",
    )
    save_png(figure, path)


def plot_loss_scale(group: Group, path: Path) -> None:
    figure, axes = new_figure(size=(6.5, 4))
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
    save_png(figure, path)


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
    figure, axes = new_figure(size=(7.5, 4))
    run = histogram_run(group)
    rows = download_json(run.run_id, "plots/underflow_histogram.json") if run else None
    caption = "no run in this group recorded the histogram"
    if run and rows:
        x = [row["log2_magnitude"] for row in rows]
        scale = rows[0]["loss_scale"]
        shift = math.log2(scale)
        axes.bar(x, [row["share"] for row in rows], width=0.9, color="tab:blue", label="fp32 values")
        if shift:
            axes.step(
                [v + shift for v in x],
                [row["share"] for row in rows],
                where="mid",
                color="tab:red",
                label=f"times the loss scale {scale:g}",
            )
        axes.axvspan(
            min(x) - 1, math.log2(FP16_SMALLEST_SUBNORMAL), color="grey", alpha=0.3, label="below 2^-24: zero in fp16"
        )
        axes.axvspan(
            math.log2(FP16_SMALLEST_SUBNORMAL),
            math.log2(FP16_SMALLEST_NORMAL),
            color="orange",
            alpha=0.2,
            label="2^-24 to 2^-14: fp16 subnormals",
        )
        axes.axvline(math.log2(65504), color="black", linestyle="--", label="fp16's largest value")
        axes.legend(fontsize=8)
        caption = f"run {run.run_id[:8]} ({run.precision}, seed {run.seed}), its last sampled step"
    else:
        _no_data(axes, "the histogram")
    axes.set(
        xlabel="log2 |activation gradient|",
        ylabel="share of non-zero values",
        title="Activation gradients against fp16's range",
    )
    save_png(figure, path)
    return caption
