"""One parent run per variant in the training experiment, over its seed runs.

MLflow's runs table nests a run under the run its `mlflow.parentRunId` tag
names, so each variant of a group (device, configuration and optimizer, as
the report groups them) becomes one expandable row whose own metrics are its
verdict against fp32 across seeds: the mean and interval the table cannot
compute (MLflow issues 3237, 3762, 4277). A parent is found again by a key of
its group and variant, so a second report updates it instead of adding
another: params, fixed by MLflow once logged, hold only what the key holds;
the verdict is metrics, logged again at step 0 (MLflow shows the newest).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mnist_precision.analysis.report.comparison import Group, Verdict, verdicts
from mnist_precision.analysis.report.markdown import baseline_sentence, verdict_sentence
from mnist_precision.analysis.stats import Interval
from mnist_precision.base import names
from mnist_precision.base.precision_table import BASELINE
from mnist_precision.tracking.lifecycle import forbidden, not_permitted
from mnist_precision.tracking.run_types import RUN_TYPE_TAG, VARIANT

KEY_TAG = names.VARIANT_KEY
PARENT_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description in the UI


def variant_key(group: Group, precision: str) -> str:
    return hashlib.sha256(json.dumps([group.device, group.config, precision]).encode()).hexdigest()[:16]


def update_parents(client: MlflowClient, experiment_id: str, groups: list[Group]) -> int:
    """Create or update each variant's parent run and nest its seed runs under
    it; return how many parents there are."""
    found = {
        run.data.tags.get(KEY_TAG): run.info.run_id
        for run in client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_TYPE_TAG}` = '{VARIANT}'", max_results=10_000
        )
    }
    count = 0
    try:
        for group in groups:
            against = {v.precision: v for v in verdicts(group)}
            for precision in group.precisions():
                key = variant_key(group, precision)
                parent = found.get(key) or create_parent(client, experiment_id, group, precision, key)
                record_verdict(client, parent, group, precision, against.get(precision))
                for run in group.runs[precision].values():
                    client.set_tag(run.run_id, PARENT_TAG, parent)
                count += 1
    except MlflowException as error:
        if forbidden(error):
            raise not_permitted(experiment_id) from None
        raise
    return count


def create_parent(client: MlflowClient, experiment_id: str, group: Group, precision: str, key: str) -> str:
    run = client.create_run(experiment_id, run_name=precision, tags={RUN_TYPE_TAG: VARIANT, KEY_TAG: key})
    params = {"precision": precision, "device": group.device, **dict(group.config)}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def record_verdict(client: MlflowClient, parent: str, group: Group, precision: str, verdict: Verdict | None) -> None:
    accuracy = group.values(precision, "test_accuracy")
    values = {names.VERDICT_SEEDS: len(accuracy), names.VERDICT_TEST_ACCURACY: statistics.fmean(accuracy.values())}
    if verdict is not None:
        values |= interval_metrics(names.VERDICT_ACCURACY_DIFFERENCE, verdict.accuracy)
        values |= interval_metrics(names.VERDICT_THROUGHPUT_RATIO, verdict.throughput)
        inside = verdict.accuracy.contains(0.0)
        values[names.VERDICT_WITHIN_NOISE] = math.nan if inside is None else float(inside)
    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[Metric(k, v, now, 0) for k, v in values.items()],
        tags=[RunTag(DESCRIPTION_TAG, description(group, precision, verdict))],
    )
    client.update_run(parent, name=f"{precision}: {len(accuracy)} seeds, {group.optimizer}")


def description(group: Group, precision: str, verdict: Verdict | None) -> str:
    """The report's sentence for the variant."""
    if verdict is not None:
        return verdict_sentence(group, verdict)
    if precision == BASELINE:
        return baseline_sentence(group)
    return f"{precision}: no {BASELINE} runs in its group to compare against; on {group.device}."


def interval_metrics(name: str, interval: Interval) -> dict[str, float]:
    """The estimate and its bounds; NaN bounds where there is no interval, so
    that a bound from an earlier report never stays beside a newer estimate."""
    low = interval.low if interval.low is not None else math.nan
    high = interval.high if interval.high is not None else math.nan
    return {name: interval.estimate, names.bound(name, "low"): low, names.bound(name, "high"): high}
