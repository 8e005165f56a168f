"""The comparison: the finished runs, their groups, and each precision's verdict against fp32.

Runs are grouped by device and configuration, the optimizer included (runs
from different devices, configurations or optimizers are never averaged
together), and within a group by precision and seed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_precision.analysis.crossover.record import CrossoverMap
from mnist_precision.analysis.report.quiet import no_progress_bar
from mnist_precision.analysis.stats import Interval, difference_of_means, ratio_of_means
from mnist_precision.base import names
from mnist_precision.base.errors import UserError
from mnist_precision.base.precision_table import BASELINE, NAMES
from mnist_precision.tracking.run_types import is_training_run

# What makes two runs comparable, besides precision and seed.
CONFIG_PARAMS = ("train.hidden", "train.batch_size", "train.epochs", "train.lr", "train.compile")
# The optimizer too (runs from before the param trained with SGD), and AdamW's hyperparameters.
ADAMW_PARAMS = ("train.weight_decay", "train.betas", "train.eps")


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
    update_bias: float | None = None  # the last epoch's, where no loss scale was in the gradients
    second_moment_flushed: float | None = None  # the last epoch's, AdamW only
    loss_by_epoch: dict[int, float] = field(default_factory=dict)
    lost_updates_by_epoch: dict[int, float] = field(default_factory=dict)
    update_bias_by_epoch: dict[int, float] = field(default_factory=dict)
    loss_scale_by_step: dict[int, float] = field(default_factory=dict)


@dataclass
class Group:
    device: str
    config: tuple[tuple[str, str], ...]
    runs: dict[str, dict[int, RunRecord]] = field(default_factory=lambda: defaultdict(dict))
    superseded: int = 0  # older runs of a (precision, seed) already present

    @property
    def optimizer(self) -> str:
        return dict(self.config).get("optimizer", "sgd")

    def title(self) -> str:
        return f"{self.device}; " + ", ".join(f"{k.removeprefix('train.')} {v}" for k, v in self.config)

    def precisions(self) -> list[str]:
        """The variants, in the order of the precision table."""

        def order(variant: str) -> tuple[int, str]:
            base = variant.split(" ")[0]
            return (NAMES.index(base) if base in NAMES else len(NAMES), variant)

        return sorted(self.runs, key=order)

    def values(self, precision: str, metric: str) -> dict[int, float]:
        return {
            seed: getattr(run, metric) for seed, run in self.runs[precision].items() if getattr(run, metric) is not None
        }


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
    runs = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        if not is_training_run(run.data.tags) or names.TEST_ACCURACY not in metrics:
            continue
        memory_kind = next((k for k in names.PEAK_MEMORY if k in metrics), None)

        def history(key: str, run_id: str = run.info.run_id) -> dict[int, float]:
            return {point.step: point.value for point in client.get_metric_history(run_id, key) if point.step >= 1}

        records.append(
            RunRecord(
                run_id=run.info.run_id,
                precision=variant(params),
                seed=int(params["seed"]),
                device=device_label(params),
                config=config_of(params),
                test_accuracy=metrics[names.TEST_ACCURACY],
                samples_per_s=metrics[names.SAMPLES_PER_S],
                peak_memory_mb=metrics.get(memory_kind) if memory_kind else None,
                peak_memory_kind=memory_kind,
                model_bytes_fp32=metrics.get(names.MODEL_BYTES_FP32),
                model_bytes_fp16=metrics.get(names.MODEL_BYTES_FP16),
                fp16_stored_test_accuracy=metrics.get(names.FP16_STORED_TEST_ACCURACY),
                lost_updates=metrics.get(names.LOST_UPDATES),
                act_grads_flushed=metrics.get(names.underflow("act_grads", "flushed")),
                act_grads_scaled_flushed=metrics.get(names.underflow("act_grads", "flushed", scaled=True)),
                update_bias=metrics.get(names.UPDATE_BIAS),
                second_moment_flushed=metrics.get(names.SECOND_MOMENT_FLUSHED),
                loss_by_epoch=history(names.TRAIN_LOSS),
                lost_updates_by_epoch=history(names.LOST_UPDATES) if names.LOST_UPDATES in metrics else {},
                update_bias_by_epoch=history(names.UPDATE_BIAS) if names.UPDATE_BIAS in metrics else {},
                loss_scale_by_step=history(names.LOSS_SCALE) if names.LOSS_SCALE in metrics else {},
            )
        )
    return records


def config_of(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What the run's group must share with it: the training recipe and the optimizer."""
    optimizer = params.get("optimizer", "sgd")
    keys = CONFIG_PARAMS + (ADAMW_PARAMS if optimizer == "adamw" else ())
    return tuple((key, params.get(key, "?")) for key in keys) + (("optimizer", optimizer),)


def variant(params: dict[str, str]) -> str:
    """The precision, and its loss scale where it is not the default."""
    loss_scale = params.get("loss_scale", "dynamic")
    return params["precision"] if loss_scale == "dynamic" else f"{params['precision']} (loss_scale {loss_scale})"


def device_label(params: dict[str, str]) -> str:
    """The device, what it offers for each precision, the threads the run used,
    and the software whose kernels it ran (torch, and CUDA on a GPU): runs that
    differ in any of these are other groups, since these decide the speed."""
    offers = (
        f"compute capability {params[names.CUDA_COMPUTE_CAPABILITY]}"
        if names.CUDA_COMPUTE_CAPABILITY in params
        else f"{params[names.CPU_CAPABILITY]}, features {params.get(names.CPU_FEATURES, 'none')}"
        if names.CPU_CAPABILITY in params
        else "features not recorded"
    )
    threads = f", {params[names.THREADS]} threads" if names.THREADS in params else ""
    software = f"torch {params.get(names.TORCH_VERSION, 'not recorded')}"
    if params.get(names.DEVICE_RESOLVED, "").startswith("cuda"):
        software += f", CUDA {params.get(names.CUDA_VERSION, 'not recorded')}"
    return (
        f"{params.get(names.DEVICE_RESOLVED, '?')} ({params.get(names.DEVICE_NAME, 'unknown device')}; "
        f"{offers}{threads}; {software})"
    )


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
        Verdict(
            precision,
            len(group.runs[precision]),
            difference_of_means(group.values(precision, "test_accuracy"), group.values(BASELINE, "test_accuracy")),
            ratio_of_means(group.values(precision, "samples_per_s"), group.values(BASELINE, "samples_per_s")),
        )
        for precision in group.precisions()
        if precision != BASELINE
    ]


def download_json(run_id: str, artifact: str):
    try:
        with no_progress_bar():
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    except MlflowException:  # a run from before the diagnostics
        return None
    return json.loads(Path(local).read_text())


def crossover_maps(client: MlflowClient, experiment: str) -> list[tuple[str, CrossoverMap]]:
    """The newest crossover map of each device and software, with its run id,
    from `<experiment>-benchmarks` (`mnist-precision crossover`)."""
    found = client.get_experiment_by_name(f"{experiment}-benchmarks")
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        order_by=["attributes.start_time DESC"],
        filter_string="attributes.status = 'FINISHED' and tags.benchmark = 'crossover'",
    )
    maps, seen = [], set()
    for run in runs:
        key = (run.data.params.get("device"), run.data.params.get("software"))
        if key in seen:  # an older map of a device already mapped
            continue
        artifact = next(
            (a.path for a in client.list_artifacts(run.info.run_id, "crossover") if a.path.endswith(".json")), None
        )
        crossover = download_json(run.info.run_id, artifact) if artifact else None
        if crossover:
            maps.append((run.info.run_id, CrossoverMap.from_dict(crossover)))
            seen.add(key)
    return maps
