"""The verdict in MLflow's UI: each variant's seed runs nest under one parent
run that carries its verdict; a second report updates the parents, and nothing
counts a parent as a training run; the saved view that `mnist-precision ui`
opens; the UI's own server never mistaken for another on its port."""

from __future__ import annotations

import base64
import json
import math
import socket
import zlib

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from mnist_precision.analysis.report.comparison import collect, group_runs
from mnist_precision.analysis.report.parents import DESCRIPTION_TAG, PARENT_TAG, update_parents
from mnist_precision.base import names
from mnist_precision.operations.runs import stale
from mnist_precision.operations.server import Network, ServerError
from mnist_precision.operations.ui import refuse_a_taken_port
from mnist_precision.tracking.run_types import RUN_TYPE_TAG, VARIANT
from mnist_precision.tracking.view import VIEW_KEY, VIEW_TAG, runs_table_address, save_view

DEVICE = {
    "device_resolved": "cpu",
    "device_name": "AMD EPYC",
    "cpu_capability": "AVX2",
    "threads": "1",
    "torch_version": "2.14.1",
}
RECIPE = {
    "train.hidden": "[256]",
    "train.batch_size": "64",
    "train.epochs": "1",
    "train.lr": "0.01",
    "train.compile": "False",
    "optimizer": "sgd",
}
# Per precision, per seed: (test accuracy, samples/s).
SWEEP = {
    "fp32": [(0.950, 1000.0), (0.952, 1010.0), (0.951, 990.0)],
    "fp16": [(0.951, 160.0), (0.952, 170.0), (0.950, 165.0)],
}


@pytest.fixture
def store(tmp_path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("mnist-precision", artifact_location=(tmp_path / "a").as_uri())
    for precision, seeds in SWEEP.items():
        for seed, (accuracy, speed) in enumerate(seeds):
            run = client.create_run(experiment_id, run_name=f"{precision}-seed{seed}")
            params = DEVICE | RECIPE | {"precision": precision, "seed": str(seed)}
            client.log_batch(
                run.info.run_id,
                params=[Param(k, v) for k, v in params.items()],
                metrics=[Metric(names.TEST_ACCURACY, accuracy, 0, 0), Metric(names.SAMPLES_PER_S, speed, 0, 0)],
            )
            client.set_terminated(run.info.run_id)
    return client, experiment_id


def parents(client: MlflowClient, experiment_id: str) -> dict[str, object]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TYPE_TAG}` = '{VARIANT}'")
    return {run.data.params["precision"]: run for run in runs}


def test_each_variant_gets_one_parent_with_its_verdict_and_its_seed_runs_beneath(store):
    client, experiment_id = store
    assert update_parents(client, experiment_id, group_runs(collect(client, experiment_id))) == 2
    found = parents(client, experiment_id)
    assert sorted(found) == ["fp16", "fp32"]
    fp16 = found["fp16"]
    assert fp16.info.status == "FINISHED" and fp16.info.run_name == "fp16: 3 seeds, sgd"
    assert fp16.data.params["optimizer"] == "sgd" and fp16.data.params["train.hidden"] == "[256]"
    assert "cpu (AMD EPYC; AVX2" in fp16.data.params["device"]
    verdict = fp16.data.metrics
    assert verdict[names.VERDICT_SEEDS] == 3 and verdict[names.VERDICT_TEST_ACCURACY] == pytest.approx(0.951)
    assert verdict[names.VERDICT_ACCURACY_DIFFERENCE] == pytest.approx(0.0)
    low, high = (
        verdict[names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "low")],
        verdict[names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "high")],
    )
    assert low < 0 < high and verdict[names.VERDICT_WITHIN_NOISE] == 1.0
    assert verdict[names.VERDICT_THROUGHPUT_RATIO] == pytest.approx(165 / 1000, rel=0.01)
    ratio_low = verdict[names.bound(names.VERDICT_THROUGHPUT_RATIO, "low")]
    assert (
        ratio_low
        < verdict[names.VERDICT_THROUGHPUT_RATIO]
        < verdict[names.bound(names.VERDICT_THROUGHPUT_RATIO, "high")]
    )
    description = fp16.data.tags[DESCRIPTION_TAG]
    assert description.startswith("fp16 against fp32 (sgd; 3 vs 3 seeds): test accuracy +0.0000 [")
    assert "within noise; throughput 0.16 [" in description
    assert (
        found["fp32"]
        .data.tags[DESCRIPTION_TAG]
        .startswith("fp32, the reference (sgd; 3 seeds): mean test accuracy 0.9510")
    )
    for precision, parent in found.items():
        children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
        assert sorted(r.info.run_name for r in children) == [f"{precision}-seed{s}" for s in range(3)]


def test_a_second_report_updates_the_parents_and_never_counts_them_as_training_runs(store):
    client, experiment_id = store
    update_parents(client, experiment_id, group_runs(collect(client, experiment_id)))
    found = parents(client, experiment_id)
    first = {p: run.info.run_id for p, run in found.items()}
    first_low = found["fp16"].data.metrics[names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "low")]
    # One fp16 seed is gone: the verdict changes, and the parents stay the same runs.
    gone = next(r for r in client.search_runs([experiment_id], "params.precision = 'fp16' and params.seed = '2'"))
    client.delete_run(gone.info.run_id)
    records = collect(client, experiment_id)
    assert len(records) == 5 and all(r.precision in SWEEP for r in records)  # no parent among them
    assert update_parents(client, experiment_id, group_runs(records)) == 2
    again = parents(client, experiment_id)
    assert {p: run.info.run_id for p, run in again.items()} == first
    assert again["fp16"].data.metrics[names.VERDICT_SEEDS] == 2 and again["fp16"].info.run_name == "fp16: 2 seeds, sgd"
    assert "(sgd; 2 vs 3 seeds)" in again["fp16"].data.tags[DESCRIPTION_TAG]
    # Welch's interval of 2 and 3 seeds, not the first report's paired one.
    low = again["fp16"].data.metrics[names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "low")]
    assert not math.isnan(low) and low != pytest.approx(first_low)
    # One seed left: no interval, so no bound of an earlier report stays beside the new estimate.
    second = next(r for r in client.search_runs([experiment_id], "params.precision = 'fp16' and params.seed = '1'"))
    client.delete_run(second.info.run_id)
    update_parents(client, experiment_id, group_runs(collect(client, experiment_id)))
    single = parents(client, experiment_id)["fp16"].data
    assert math.isnan(single.metrics[names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "low")])
    assert (
        math.isnan(single.metrics[names.VERDICT_WITHIN_NOISE])
        and "too few seeds to tell" in single.tags[DESCRIPTION_TAG]
    )
    # A parent left RUNNING (a report stopped between creating it and ending it) is no stale training run.
    client.update_run(first["fp16"], status="RUNNING")
    assert stale(client, experiment_id) == []


def test_the_saved_view_is_the_runs_table_with_precision_and_the_verdict(store):
    client, experiment_id = store
    save_view(client, experiment_id)
    save_view(client, experiment_id)  # again: the same view, rewritten
    tags = client.get_experiment(experiment_id).tags
    assert [k for k in tags if k.startswith("mlflow.sharedViewState.")] == [VIEW_TAG]
    view = json.loads(tags[VIEW_TAG])
    assert view["name"] == "Precision verdict" and view["updatedAt"] >= view["createdAt"]
    state = json.loads(zlib.decompress(base64.b64decode(view["state"].removeprefix("deflate;"))))
    assert state["selectedColumns"][:3] == [
        "params.`precision`",
        "params.`optimizer`",
        f"metrics.`{names.VERDICT_ACCURACY_DIFFERENCE}`",
    ]
    assert state["columnOrder"] == state["selectedColumns"] and state["orderByKey"] == "attributes.start_time"
    assert (
        runs_table_address("http://127.0.0.1:5000/", experiment_id)
        == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
    )


def test_the_ui_refuses_a_port_another_server_holds():
    """Another server there would answer the UI's health probe in place of its own."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = Network("127.0.0.1", other.getsockname()[1])
        with pytest.raises(ServerError, match=f"port {taken.port} on 127.0.0.1 is taken .*choose another with --port"):
            refuse_a_taken_port(taken)
    refuse_a_taken_port(taken)  # free again
