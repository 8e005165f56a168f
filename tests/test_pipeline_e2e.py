"""The user's workflow, end to end: the real `dvc` CLI and a real MLflow store on real MNIST.

The project is copied into a temporary git repository; MNIST comes over HTTP
from 127.0.0.1 (the offline copy beside the checkout) or, where that copy is
absent, from the public mirrors.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request

import dvc.api
import pytest
import torch
import yaml

from mnist_precision.core.data import read_pixels, split_files
from mnist_precision.core.device import cpu_features
from mnist_precision.core.idx import read_idx

from helpers import REPO_ROOT, Project, free_port, make_project, running_queue, served_model, wait_for_queue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_mirror) -> Project:
    # params.yaml's own thread budget, as a user runs it: the variants check it.
    return make_project(tmp_path_factory.mktemp("project"), mnist_mirror, threads="auto")


MIN_TEST_ACCURACY = 0.90  # one epoch of the reference recipe reaches about 0.91
NOTHING_RERUN = {"Stage 'train' didn't change, skipping", "Stage 'evaluate' didn't change, skipping"}


def assert_evaluated(project: Project, precision: str) -> None:
    train = project.json("metrics/train.json")
    evaluate = project.json("metrics/evaluate.json")
    assert train["samples_per_s"] > 0 and train["train_loss"] > 0
    assert evaluate["test_accuracy"] >= MIN_TEST_ACCURACY, evaluate
    assert evaluate["model_bytes_fp16"] < 0.55 * evaluate["model_bytes_fp32"]
    assert evaluate["model_bytes_fp16"] == (project.root / "models" / "model_fp16.pt").stat().st_size
    assert abs(evaluate["fp16_stored_test_accuracy"] - evaluate["test_accuracy"]) < 0.005
    assert len(evaluate["per_class_accuracy"]) == 10
    assert ("grad_scale_final" in train) == (precision == "fp16")
    assert len(project.json("plots/train_epochs.json")) == 1
    assert len(project.json("plots/confusion.json")) == 10_000
    assert (project.root / "plots/confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_lineage(project: Project, run) -> None:
    """The run names its data as MLflow's Datasets (the digest: MD5 of the
    split's downloaded files) and as DVC's lock hashes it."""
    data = project.root / "data" / "mnist"
    inputs = {
        (entry.dataset.name, entry.dataset.digest, {tag.key: tag.value for tag in entry.tags}["mlflow.data.context"])
        for entry in run.inputs.dataset_inputs
    }
    checksums = {
        split: hashlib.md5(b"".join(path.read_bytes() for path in split_files(data, split))).hexdigest()
        for split in ("train", "test")
    }
    assert inputs == {("mnist-train", checksums["train"], "training"), ("mnist-test", checksums["test"], "evaluation")}
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    (data_out,) = lock["stages"]["download"]["outs"]
    assert run.data.tags["dvc.data_md5"] == data_out["md5"] and data_out["md5"].endswith(".dir")


def test_repro_then_fp16_experiment(project):
    project.run("dvc", "repro")
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "environment", "train", "evaluate"}
    assert "environment.json" in {dep["path"] for dep in lock["stages"]["train"]["deps"]}
    assert lock["stages"]["train"]["params"]["params.yaml"]["precision"] == "fp32"
    assert_evaluated(project, "fp32")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "fp32 baseline")

    result = project.run("dvc", "exp", "run", "-S", "precision=fp16")
    assert "Stage 'download' didn't change, skipping" in result.stdout  # precision is not a download param
    native = {"avx512_fp16", "amx_fp16"} & set(cpu_features())
    warned = "train: warning: fp16 is not native here" in result.stdout + result.stderr
    assert warned != bool(native), result.stderr  # one warning, where this CPU lacks native fp16
    assert_evaluated(project, "fp16")

    client, experiment, runs = project.mlflow_runs()
    assert experiment.artifact_location == (project.root / "mlartifacts").as_uri()
    by_precision = {run.data.params["precision"]: run for run in runs}
    assert sorted(by_precision) == ["fp16", "fp32"] and len(runs) == 2
    for run in by_precision.values():
        assert run.info.status == "FINISHED"
        assert run.data.params["device_resolved"] == "cpu"
        assert run.data.params["cpu_capability"] and run.data.params["cpu_features"]
        assert run.data.params["train.batch_size"] == "64"
        assert run.data.metrics["test_accuracy"] >= MIN_TEST_ACCURACY
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
        assert run.data.tags["git_commit"]
        models = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert [m.name for m in models] == ["model"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"params.yaml", "metrics", "plots"} <= artifacts
        assert_lineage(project, run)
        (version,) = client.search_model_versions(f"name = 'mnist-precision' and run_id = '{run.info.run_id}'")
        expected = {key: run.data.params[key] for key in ("precision", "loss_scale", "optimizer", "seed")}
        assert version.tags == expected | {
            "device": f"cpu ({run.data.params['device_name']})",
            "test_accuracy": str(run.data.metrics["test_accuracy"]),
        }
        assert "model_fp16/model_fp16.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "model_fp16")}
    assert by_precision["fp32"].info.run_name == "fp32-workspace"
    exp_name = by_precision["fp16"].data.tags["dvc.exp_name"]
    assert by_precision["fp16"].info.run_name == f"fp16-{exp_name}"
    assert by_precision["fp16"].data.tags["dvc.baseline_rev"]

    # DVC's registry: GTO registers the dvc.yaml artifact, `dvc artifacts get` fetches it.
    project.run("gto", "register", "mnist-mlp")
    fetched = project.root / "reports" / "fetched-model.pt"
    project.run("dvc", "artifacts", "get", str(project.root), "mnist-mlp", "-o", str(fetched))
    committed = yaml.safe_load(project.run("git", "show", "HEAD:dvc.lock").stdout)["stages"]["train"]["outs"]
    (model_out,) = [out for out in committed if out["path"] == "models/model.pt"]
    assert hashlib.md5(fetched.read_bytes()).hexdigest() == model_out["md5"]  # the fp32 baseline's weights

    out = project.run("dvc", "repro").stdout
    # The environment is checked on every repro; the same machine retrains nothing.
    assert "Running stage 'environment'" in out and NOTHING_RERUN <= set(out.splitlines()), out

    # A maintainer edits a module of core/, which train and evaluate import (download uses
    # one module of it), then one of analysis/, which no stage imports.
    package = project.root / "src" / "mnist_precision"
    for module, rerun in (
        (package / "core" / "device.py", {"environment", "train", "evaluate"}),
        (package / "analysis" / "stats.py", {"environment"}),
    ):
        original = module.read_text()
        module.write_text(original + "\n# edited\n")
        try:
            status = project.run("dvc", "status", "--json").stdout
            changed = yaml.safe_load(status)
            assert set(changed) == rerun, status
            assert changed["environment"] == ["always changed"]
        finally:
            module.write_text(original)


def declared_charts() -> dict[str, list[str]]:
    """The vega charts dvc.yaml declares at its top level (an image is only a
    path): each title with its axes' titles, x then y."""
    charts = {}
    for plot in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]:
        if isinstance(plot, dict):
            ((title, spec),) = plot.items()
            ((field,),) = [[ys] if isinstance(ys, str) else [ys[0]] for ys in spec["y"].values()]
            charts[title] = [spec.get("x_label", spec["x"]), spec.get("y_label", field)]
    return charts


@pytest.mark.needs_chromium
@pytest.mark.needs_vega
def test_dvc_plots_show_and_diff_render_the_declared_charts_and_nothing_else(project, tmp_path):
    """Test one left the fp16 experiment in the workspace over the committed fp32 baseline."""
    from plots_page import render

    exp_name = project.run("dvc", "exp", "ls", "--name-only").stdout.split()[-1]
    shown = project.run("dvc", "plots", "show", "-o", str(tmp_path / "show"))
    diffed = project.run("dvc", "plots", "diff", "HEAD", exp_name, "-o", str(tmp_path / "diff"))
    for result in (shown, diffed):
        assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr

    declared = declared_charts()
    assert len(declared) == 9 and not any("'" in title for title in declared)  # a quote breaks DVC's page script
    for name, revisions in (("show", ["workspace"]), ("diff", ["HEAD", exp_name])):
        page = render(tmp_path / name / "index.html", project.root / "reports" / f"dvc-plots-{name}.png")
        assert page.errors == [], name
        assert page.images == [f"static/{rev}_plots_confusion.png" for rev in revisions]  # each revision's, once
        assert len(page.charts) == len(declared), name
        for title, axes in declared.items():
            (chart,) = [chart for chart in page.charts if title in chart.titles]
            assert set(chart.axis_titles) == set(axes), (name, title)  # a faceted chart repeats its x
            assert all(rev in chart.texts for rev in revisions), (name, title)  # each revision drawn in it
        histogram = next(chart for chart in page.charts if "log2 of the magnitude" in chart.axis_titles)
        # vega writes negative labels with a Unicode minus: read as UTF-8, not as mojibake
        assert any(text.startswith("\u2212") for text in histogram.texts)
        assert not any("\u00e2" in text for text in histogram.texts)


SERVED_IMAGES = 1000


def baseline_model(project: Project) -> tuple[str, list[int], torch.Tensor]:
    """The committed fp32 run's logged model, the evaluate stage's predictions of
    the first test images (its confusion rows, in the test set's order), and
    those images as MNIST stores them."""
    client, experiment, runs = project.mlflow_runs()
    (fp32,) = [run for run in runs if run.data.params["precision"] == "fp32"]
    (model,) = client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{fp32.info.run_id}'"
    )
    rows = json.loads(dvc.api.read("plots/confusion.json", repo=str(project.root), rev="HEAD"))[:SERVED_IMAGES]
    pixels = read_pixels(project.root / "data" / "mnist", "test")[:SERVED_IMAGES]
    return model.model_id, [row["predicted"] for row in rows], pixels


def accuracy(predicted, labels) -> float:
    return sum(int(p) == int(label) for p, label in zip(predicted, labels, strict=True)) / len(labels)


def test_the_logged_model_serves_raw_pixels_over_http_as_the_evaluate_stage_scored_them(project):
    model_id, evaluated, pixels = baseline_model(project)
    labels = read_idx(project.root / "data" / "mnist" / "t10k-labels-idx1-ubyte")[:SERVED_IMAGES]
    port = free_port()
    with served_model(project, model_id, port):
        body = json.dumps({"inputs": pixels.tolist()}).encode()  # 0-255, as a client has them
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            logits = json.loads(answer.read())["predictions"]
    predicted = torch.tensor(logits).argmax(dim=1).tolist()
    assert accuracy(predicted, labels) == accuracy(evaluated, labels) > 0.9
    assert sum(a != b for a, b in zip(predicted, evaluated, strict=True)) <= 1


def test_the_logged_model_loads_with_pyfunc_and_says_what_it_takes(project):
    import mlflow

    model_id, evaluated, pixels = baseline_model(project)
    client, _, _ = project.mlflow_runs()
    model = mlflow.pyfunc.load_model(client.get_logged_model(model_id).artifact_location)
    (spec,) = model.metadata.get_input_schema().inputs
    assert (str(spec.type), spec.shape) == ("uint8", (-1, 28, 28))
    predicted = model.predict(pixels.numpy()).argmax(axis=1).tolist()
    labels = read_idx(project.root / "data" / "mnist" / "t10k-labels-idx1-ubyte")[:SERVED_IMAGES]
    assert accuracy(predicted, labels) == accuracy(evaluated, labels)


def test_another_cpu_capability_reruns_train_and_evaluate_and_the_first_comes_back(project):
    """PyTorch's own switch of the kernels it dispatches to, as another machine would have."""
    project.run("git", "checkout", "--", ".")  # the committed fp32 baseline, as test one left it
    project.run("dvc", "checkout")
    first = (project.root / "environment.json").read_text()
    native = json.loads(first)["cpu_capability"]

    out = project.run("dvc", "repro", env={"ATEN_CPU_CAPABILITY": "default"}).stdout
    assert {"Running stage 'train':", "Running stage 'evaluate':"} <= set(out.splitlines()), out
    assert project.json("environment.json")["cpu_capability"] == "DEFAULT"
    client, _, runs = project.mlflow_runs()
    assert sorted(
        run.data.params["cpu_capability"] for run in runs if run.data.params["precision"] == "fp32"
    ) == sorted([native, "DEFAULT"])

    out = project.run("dvc", "repro").stdout  # back on this machine's own kernels
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out, out  # its run, not a new one
    assert (project.root / "environment.json").read_text() == first
    assert project.run("dvc", "status").stdout.count("always changed") == 1  # nothing else differs


# (precision, loss_scale, optimizer): every precision the CPU runs but fp32 (the
# committed baseline), bf16 (the sweep's queued experiments) and fp8.
CPU_VARIANTS = (
    ("fp16-true", "dynamic", "sgd"),
    ("bf16-true", "dynamic", "sgd"),
    ("fp16", "none", "sgd"),
    ("bf16-true-sr", "dynamic", "adamw"),
    ("fp16-true-sr", "dynamic", "sgd"),
)
# The plumbing of each variant, not its learning (test_numerics.py trains whole
# epochs): 400 steps, sampled every 100, are enough for the numerics to show.
SHORT = ("-S", "train.max_steps=400", "-S", "diagnostics.every_steps=100")


def test_every_variant_that_runs_on_the_cpu_runs_as_an_experiment(project):
    for precision, loss_scale, optimizer in CPU_VARIANTS:
        project.run(
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            f"precision={precision}",
            "-S",
            f"loss_scale={loss_scale}",
            "-S",
            f"optimizer={optimizer}",
            "-S",
            "seed=2",
            *SHORT,
        )
    with running_queue(project, jobs=2):
        status = wait_for_queue(project, timeout=900)
    assert status.count("Success") == len(CPU_VARIANTS), str(status)

    client, experiment, runs = project.mlflow_runs()
    variants = {
        (run.data.params["precision"], run.data.params["loss_scale"], run.data.params["optimizer"]): run
        for run in runs
        if run.data.params["seed"] == "2"
    }
    assert sorted(variants) == sorted(CPU_VARIANTS)
    for (precision, _loss_scale, optimizer), run in variants.items():
        assert run.info.status == "FINISHED", precision
        assert run.data.metrics["test_accuracy"] >= 0.85, (precision, run.data.metrics["test_accuracy"])
        # 2 cores shared by the experiments running when it started (1 or 2 of them)
        assert run.data.params["threads"] in ("1", "2") and "cores shared by" in run.data.params["threads_from"]
        assert ("grad_scale_final" in run.data.metrics) is False  # no GradScaler in any of them
        assert 0 <= run.data.metrics["lost_updates"] <= 1 and "underflow_act_grads_flushed" in run.data.metrics
        assert ("second_moment_flushed" in run.data.metrics) == (optimizer == "adamw")
        scales = client.get_metric_history(run.info.run_id, "loss_scale")
        assert [m.step for m in scales] == [100, 200, 300, 400] and {m.value for m in scales} == {1.0}
        models = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert [m.name for m in models] == ["model"]
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/diagnostics.json", "plots/loss_scale.json", "plots/underflow_histogram.json"} <= plots
    dtypes = {precision: run.data.params["compute_dtype"] for (precision, _, _), run in variants.items()}
    assert dtypes == {
        "fp16-true": "float16",
        "bf16-true": "bfloat16",
        "fp16": "float16",
        "bf16-true-sr": "bfloat16",
        "fp16-true-sr": "float16",
    }
    # What rounding to half does to the stored weights' updates, measured in the real runs.
    metrics = {precision: run.data.metrics for (precision, _, _), run in variants.items()}
    # (fp16 keeps fp32 master weights.)
    assert metrics["bf16-true"]["lost_updates"] > metrics["fp16-true"]["lost_updates"] > metrics["fp16"]["lost_updates"]
    # Round-to-nearest loses a share of each update; stochastic rounding applies it on average.
    assert metrics["bf16-true"]["update_bias"] < -0.3 and abs(metrics["fp16-true-sr"]["update_bias"]) < 0.05
    assert metrics["bf16-true-sr"]["adamw_eps_survives"] == 1.0
