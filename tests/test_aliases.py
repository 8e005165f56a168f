"""The verdict in MLflow's Model Registry: an alias per variant on its most
accurate seed's version, and `recommended-<device>` on the fastest variant
within noise of fp32, with the report's sentence as its description."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from mnist_precision.analysis.report.aliases import set_aliases
from mnist_precision.analysis.report.comparison import collect, group_runs
from mnist_precision.base import names

PARAMS = {"device_resolved": "cpu", "device_name": "AMD EPYC", "cpu_capability": "AVX512", "optimizer": "sgd"}
# Per precision, per seed: (test accuracy, samples/s). bf16 is within noise of
# fp32 and faster; fp16-true is faster still but a point less accurate.
SWEEP = {
    "fp32": [(0.950, 1000.0), (0.952, 1010.0), (0.951, 990.0)],
    "bf16": [(0.951, 1500.0), (0.953, 1480.0), (0.950, 1520.0)],
    "fp16-true": [(0.940, 2000.0), (0.941, 2010.0), (0.939, 1990.0)],
}


@pytest.fixture
def registry(tmp_path) -> tuple[MlflowClient, list, dict[tuple[str, int], int]]:
    """The sweep's runs, each with its model registered as a version of `mnist-precision`."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("mnist-precision", artifact_location=(tmp_path / "a").as_uri())
    client.create_registered_model("mnist-precision")
    versions = {}
    for precision, seeds in SWEEP.items():
        for seed, (accuracy, speed) in enumerate(seeds):
            run = client.create_run(experiment_id)
            params = PARAMS | {"precision": precision, "seed": str(seed)}
            metrics = [Metric(names.TEST_ACCURACY, accuracy, 0, 0), Metric(names.SAMPLES_PER_S, speed, 0, 0)]
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()], metrics=metrics)
            client.set_terminated(run.info.run_id)
            source = f"{run.info.artifact_uri}/model"
            version = client.create_model_version("mnist-precision", source, run_id=run.info.run_id)
            versions[precision, seed] = int(version.version)
    return client, group_runs(collect(client, experiment_id)), versions


def test_each_variant_and_the_recommended_one_get_an_alias(registry):
    client, groups, versions = registry
    aliases = set_aliases(client, "mnist-precision", groups)
    assert aliases == ["bf16-cpu", "fp16-true-cpu", "fp32-cpu", "recommended-cpu"]
    model = client.get_registered_model("mnist-precision")
    assert model.aliases == {
        "fp32-cpu": versions["fp32", 1],  # each variant's most accurate seed
        "bf16-cpu": versions["bf16", 1],
        "fp16-true-cpu": versions["fp16-true", 1],
        "recommended-cpu": versions["bf16", 1],  # within noise of fp32 and 1.5x: fp16-true is faster, not as good
    }
    description = client.get_model_version("mnist-precision", str(versions["bf16", 1])).description
    assert description.startswith("Recommended: the fastest variant whose accuracy is within noise of fp32's. bf16")


def test_without_a_variant_within_noise_fp32_is_recommended(registry):
    client, groups, versions = registry
    for group in groups:
        del group.runs["bf16"]
    set_aliases(client, "mnist-precision", groups)
    assert client.get_registered_model("mnist-precision").aliases["recommended-cpu"] == versions["fp32", 1]


def test_a_registry_without_versions_gets_no_alias(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("mnist-precision")
    assert set_aliases(client, "mnist-precision", []) == []
