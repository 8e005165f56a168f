"""The comparison workflow, end to end: a precisions x seeds sweep through DVC's
queue on two workers, on the repository's SQLite store, with one experiment
SIGKILLed midway and queued again; `dvc exp show`, the report, and the MLflow
UI in a real browser, all on that one sweep.

The twelve experiments are the sweep of issue 13 (3 precisions x 4 seeds, one
epoch each, nothing lost); the report and the UI read the same runs rather
than a sweep of their own."""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy
import psutil
import pytest
import torch

from mnist_precision.core.device import cpu_features

from helpers import CLI, Project, QueueEnd, free_port, make_project, running_queue, wait_for_queue

pytestmark = pytest.mark.slow

PRECISIONS, SEEDS = ("fp32", "fp16", "bf16"), (0, 1, 2, 3)
# The queue, the store and the report are what is tested here, not learning:
# each experiment's one epoch is cut to its first 400 steps (of 938), as
# pytorch/examples' --dry-run would, which reach about 0.88 test accuracy.
SETTINGS = ("-S", "train.max_steps=400", "-S", "train.threads=1")
MIN_TEST_ACCURACY = 0.85
EPOCH_METRICS = ("train_loss", "train_accuracy", "epoch_seconds", "epoch_skipped_steps", "lost_updates")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sweep:
    project: Project
    killed: str  # the MLflow run of the experiment SIGKILLed midway
    first_status: QueueEnd  # the queue after the first pass (11 Success, 1 Failed)
    rerun_status: QueueEnd  # after the failed one was queued again


def kill_a_training_midway(project: Project, timeout: float = 600) -> str:
    """SIGKILL the training process of a queued fp16 experiment (the slowest
    here: 400 steps take it a few seconds) a second and a half into its run,
    as the OOM killer would; the id of the MLflow run it leaves RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, runs = project.mlflow_runs()
        for run in runs:
            midway = "train_loss" not in run.data.metrics and time.time() - run.info.start_time / 1000 > 1.5
            fp16 = run.data.params.get("precision") == "fp16"
            if run.info.status == "RUNNING" and "pid" in run.data.tags and fp16 and midway:
                try:
                    training = psutil.Process(int(run.data.tags["pid"]))
                    assert "stages/train.py" in " ".join(training.cmdline())
                    training.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:  # it finished meanwhile: take another
                    continue
                return run.info.run_id
        time.sleep(0.25)
    pytest.fail("no experiment was training")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mnist_mirror) -> Sweep:
    """12 experiments, 2 at a time, against a store that does not exist yet; one
    SIGKILLed midway, then queued again as a user would."""
    project = make_project(tmp_path_factory.mktemp("sweep"), mnist_mirror)
    # One thread each, set: the report compares throughput within one thread count
    # only, and the budget's count depends on which experiments overlap.
    project.run(
        "dvc",
        "exp",
        "run",
        "--queue",
        "-S",
        f"precision={','.join(PRECISIONS)}",
        "-S",
        f"seed={','.join(map(str, SEEDS))}",
        *SETTINGS,
    )
    with running_queue(project, jobs=2):
        killed = kill_a_training_midway(project)
        first = wait_for_queue(project, timeout=1200)
    _, _, runs = project.mlflow_runs()
    params = next(run.data.params for run in runs if run.info.run_id == killed)

    # What a user does: drop the failed task, queue its params again, start the queue again.
    project.run("dvc", "queue", "remove", "--failed")
    project.run(
        "dvc",
        "exp",
        "run",
        "--queue",
        "-S",
        f"precision={params['precision']}",
        "-S",
        f"seed={params['seed']}",
        *SETTINGS,
    )
    with running_queue(project, jobs=2):
        rerun = wait_for_queue(project, timeout=600)
    return Sweep(project, killed, first, rerun)


def test_twelve_experiments_on_two_workers_one_killed_midway_and_run_again_lose_nothing(swept):
    first, rerun = swept.first_status, swept.rerun_status
    assert (first.count("Success"), first.count("Failed")) == (11, 1), str(first)
    assert (rerun.count("Success"), rerun.count("Failed")) == (12, 0), str(rerun)
    client, _, runs = swept.project.mlflow_runs()
    assert collections.Counter(run.info.status for run in runs) == {"FINISHED": 12, "KILLED": 1}
    dead = next(run for run in runs if run.info.run_id == swept.killed)
    assert dead.info.status == "KILLED" and "hard crash" in dead.data.tags["killed_reason"]

    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert sorted((r.data.params["precision"], int(r.data.params["seed"])) for r in finished) == sorted(
        (p, s) for p in PRECISIONS for s in SEEDS
    )
    mlartifacts = (swept.project.root / "mlartifacts").as_uri()
    for run in finished:
        assert run.data.metrics["test_accuracy"] >= MIN_TEST_ACCURACY
        assert run.data.params["train.max_steps"] == "400"
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
        assert run.data.params["threads"] == "1"
        # MLflow's system metrics: what the run cost the machine.
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
        assert run.info.run_name == f"{run.data.params['precision']}-{run.data.tags['dvc.exp_name']}"
        # The artifacts land in the repository's store and survive DVC deleting its temporary copy.
        assert run.info.artifact_uri.startswith(mlartifacts)
        assert Path(run.info.artifact_uri.removeprefix("file://"), "params.yaml").is_file()


@pytest.fixture(scope="module")
def project(swept) -> Project:
    return swept.project


def test_dvc_exp_show_lists_precision_seed_accuracy_and_throughput(project):
    table = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    rows = [exp for commit in table for exp in (commit.get("experiments") or [])]
    seen = set()
    for row in rows:
        data = row["revs"][0]["data"]
        params = data["params"]["params.yaml"]["data"]
        metrics = data["metrics"]
        seen.add((params["precision"], params["seed"]))
        assert metrics["metrics/evaluate.json"]["data"]["test_accuracy"] >= MIN_TEST_ACCURACY
        assert metrics["metrics/train.json"]["data"]["samples_per_s"] > 0
    assert seen == {(p, s) for p in PRECISIONS for s in SEEDS}


def test_report_compares_each_reduced_precision_with_fp32(project):
    # A crossover map of this machine (a small grid), which the report cites.
    mapped = project.run(
        "mnist-precision", "crossover", "--budget", "8", "--widths", "32,128", "--batches", "16,64", "--threads", "1"
    )
    assert "Logged as benchmark run" in mapped.stdout
    for name in ("crossover.md", "crossover.json", *(f"crossover-{p}.png" for p in ("fp16", "bf16", "fp16-true"))):
        assert (project.root / "reports" / name).is_file(), name
    result = project.run("mnist-precision", "report")
    assert "| fp16 | 4 vs 4 |" in result.stdout  # the verdict table, in the terminal
    # The Model Registry: each variant's alias, and the one to deploy.
    assert "aliases bf16-cpu, fp16-cpu, fp32-cpu, recommended-cpu." in result.stdout
    client, _, _ = project.mlflow_runs()
    registered = client.get_registered_model("mnist-precision")
    recommended = client.get_model_version("mnist-precision", registered.aliases["recommended-cpu"])
    assert recommended.description.startswith("Recommended: the fastest variant whose accuracy is within noise")
    assert recommended.tags["precision"] in PRECISIONS
    # What the device offers for each precision, beside the group.
    assert (
        f"{torch.backends.cpu.get_cpu_capability()}, features {','.join(cpu_features()) or 'none'}, 1 threads; "
        f"torch {torch.__version__})"
    ) in result.stdout
    report = (project.root / "reports" / "precision.md").read_text()
    verdict = report.split("### Verdict", 1)[1].split("###", 1)[0]
    rows = [line for line in verdict.splitlines() if line.startswith("| fp16") or line.startswith("| bf16")]
    assert [row.split(" | ")[:2] for row in rows] == [["| fp16", "4 vs 4"], ["| bf16", "4 vs 4"]]
    assert "paired t, 4 seeds" in verdict
    assert all("[" in row for row in rows)  # an interval, not a bare estimate
    assert "from 12 finished runs" in report  # the killed run is not one of them
    figures = sorted((project.root / "reports").glob("group*.png"))
    assert [f.name for f in figures] == [
        "group1-accuracy.png",
        "group1-costs.png",
        "group1-loss-scale.png",
        "group1-loss.png",
        "group1-lost-updates.png",
        "group1-second-moment.png",
        "group1-underflow.png",
        "group1-update-bias.png",
    ]
    claims = report.split("## The claims, measured", 1)[1].split("## Group 1", 1)[0]
    assert "**Half precision halves storage.**\n- Yes, on cpu (" in claims
    assert "- On a GPU: not measured, no GPU runs or crossover map in this store" in claims and "fp16 0." in claims
    assert "- Crossover map on cpu (" in claims and "bf16-true (eager) pays" in claims
    assert "Not measured: no fp16-true, bf16-true or -sr runs in this store" in claims
    assert "| update bias | AdamW's second moment flushed |" in report and "| +0.000 | not recorded |" in report
    # The fp16 runs' activation gradients, against fp16's range, from the run's own histogram artifact.
    assert "Activation gradients of one sampled step against fp16's range (run " in report
    assert "(fp16, seed 0), its last sampled step)" in report
    for figure in figures:
        data = figure.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"]({figure.name})" in report

    client, experiment, runs = project.mlflow_runs()
    assert len(runs) == 13  # the summary and the benchmark never mix with the training runs
    # Beside them, one parent run per variant (the browser test below opens them).
    assert "MLflow: 3 variant parent run(s) in experiment 'mnist-precision'" in result.stdout
    assert len(client.search_runs([experiment.experiment_id])) == 13 + 3
    [benchmark] = client.search_runs([client.get_experiment_by_name("mnist-precision-benchmarks").experiment_id])
    assert benchmark.data.tags["mnist_precision.run_type"] == "benchmark"
    assert {a.path for a in client.list_artifacts(benchmark.info.run_id, "crossover")} >= {
        "crossover/crossover.json",
        "crossover/crossover.md",
        "crossover/crossover-bf16.png",
    }
    summaries = client.search_runs([client.get_experiment_by_name("mnist-precision-reports").experiment_id])
    assert len(summaries) == 1
    assert summaries[0].data.tags["mnist_precision.run_type"] == "summary"
    assert {a.path for a in client.list_artifacts(summaries[0].info.run_id, "report")} == {
        "report/precision.md",
        *(f"report/{f.name}" for f in figures),
    }


def test_report_says_when_there_are_too_few_seeds(project, tmp_path):
    client, experiment, runs = project.mlflow_runs()
    others = [
        r
        for r in runs
        if r.data.params["seed"] != "0" and r.data.params["precision"] == "fp16" and r.info.status == "FINISHED"
    ]
    for run in others:
        client.delete_run(run.info.run_id)
    try:
        result = project.run("mnist-precision", "report", "--out", str(tmp_path / "few.md"))
    finally:
        for run in others:
            client.restore_run(run.info.run_id)
    assert "no interval: too few seeds" in result.stdout
    assert "| fp16 | 1 vs 4 |" in (tmp_path / "few.md").read_text()


@pytest.fixture
def ui(project) -> Iterator[str]:
    """`mnist-precision ui`, as the README says, on a free port: the address it
    prints. Stopped with Ctrl-C (SIGINT) after the test, its server with it."""
    process = subprocess.Popen(
        [CLI, "ui", "--port", str(free_port())],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = process.stdout.readline()
        assert "(Ctrl-C stops it)" in printed, process.communicate(timeout=60)
        yield printed.split("each variant's verdict: ", 1)[1].split()[0]
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def center_row(page, run_name: str):
    """The scrolling part of a run's row (the grid pins the run name in a part of its own)."""
    index = page.get_by_role("row").filter(has_text=run_name).first.get_attribute("row-index")
    return page.locator(f".ag-center-cols-container [role=row][row-index='{index}']")


def _shown(value: float) -> str:
    """A metric as the UI writes it: JavaScript's shortest round-trip digits, never in exponent form here."""
    return numpy.format_float_positional(value, trim="-")


@pytest.mark.needs_chromium
def test_the_readme_address_opens_the_runs_table_with_each_variant_verdict_over_its_seeds(project, tmp_path, ui):
    from playwright.sync_api import expect, sync_playwright

    # The report again (the report tests made the parents): the parents are updated, never added.
    project.run("mnist-precision", "report", "--out", str(tmp_path / "again.md"))
    client, experiment, runs = project.mlflow_runs()
    parents = {
        run.data.params["precision"]: run
        for run in client.search_runs(
            [experiment.experiment_id], filter_string="tags.`mnist_precision.run_type` = 'variant'"
        )
    }
    assert sorted(parents) == sorted(PRECISIONS) and len(runs) == 13
    fp16 = parents["fp16"]
    assert fp16.info.run_name == "fp16: 4 seeds, sgd" and fp16.data.metrics["verdict_seeds"] == 4
    for parent in parents.values():  # its description is the report's sentence
        assert f"- {parent.data.tags['mlflow.note.content']}\n" in (tmp_path / "again.md").read_text()
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == fp16.info.run_id]
    assert sorted(int(r.data.params["seed"]) for r in children) == list(SEEDS)  # the 4 FINISHED, not the KILLED

    screenshot = project.root / "reports" / "mlflow-verdict.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:  # a fresh browser: no switch chosen before, nothing remembered
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(ui)
            expect(page.get_by_role("columnheader", name="precision").first).to_be_visible(timeout=60_000)
            for parent in parents.values():
                expect(page.get_by_text(parent.info.run_name, exact=True)).to_be_visible()
            for child in children:  # beneath their parent, folded
                expect(page.get_by_text(child.info.run_name, exact=True)).to_have_count(0)
            verdict = center_row(page, fp16.info.run_name)
            for key in ("verdict_accuracy_vs_fp32", "verdict_within_noise", "verdict_throughput_vs_fp32"):
                expect(verdict).to_contain_text(_shown(fp16.data.metrics[key]))
            page.get_by_role("row").filter(has_text=fp16.info.run_name).first.get_by_role("button").click()
            for child in children:  # one click unfolds the variant's seeds
                expect(page.get_by_text(child.info.run_name, exact=True)).to_be_visible(timeout=30_000)
                expect(center_row(page, child.info.run_name)).to_contain_text("fp16")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.needs_chromium
def test_mlflow_ui_lists_and_compares_the_runs_in_a_real_browser(project, ui):
    from playwright.sync_api import expect, sync_playwright

    client, experiment, runs = project.mlflow_runs()
    fp32 = next(r for r in runs if r.data.params["precision"] == "fp32" and r.data.params["seed"] == "0")
    fp16 = next(r for r in runs if r.data.params["precision"] == "fp16" and r.data.params["seed"] == "0")
    server = ui.split("/#/")[0]
    screenshot = project.root / "reports" / "mlflow-compare.png"
    screenshot.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(ui)
            expect(page.get_by_text("fp32: 4 seeds, sgd", exact=True)).to_be_visible(timeout=60_000)
            # The UI knows each run's precision and test accuracy: filter on them. The
            # matching seed runs come under their parent (the UI fetches it), folded.
            search = page.locator("input[placeholder*='metrics.rmse']")
            search.fill(f'params.precision = "fp16" and metrics.test_accuracy >= {MIN_TEST_ACCURACY}')
            search.press("Enter")
            expect(page.get_by_text("fp32: 4 seeds, sgd", exact=True)).to_have_count(0, timeout=30_000)
            page.get_by_role("row").filter(has_text="fp16: 4 seeds, sgd").first.get_by_role("button").click()
            expect(page.get_by_text(fp16.info.run_name, exact=True)).to_be_visible(timeout=30_000)
            expect(page.get_by_text(fp32.info.run_name, exact=True)).to_have_count(0)

            ids = json.dumps([fp32.info.run_id, fp16.info.run_id])
            experiments = json.dumps([experiment.experiment_id])
            page.goto(f"{server}/#/compare-runs?runs={ids}&experiments={experiments}")
            expect(page.get_by_role("row", name="precision fp32 fp16")).to_be_visible(timeout=60_000)
            for run in (fp32, fp16):
                expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible()
            page.screenshot(path=str(screenshot), full_page=True)

            # The comparison's test_accuracy (the compare page's metric grid renders
            # only the rows in view; this is where its test_accuracy link leads).
            page.goto(
                f'{server}/#/metric?runs={ids}&metric="test_accuracy"&experiments={experiments}'
                '&plot_metric_keys=["test_accuracy"]'
            )
            for run in (fp32, fp16):
                row = page.get_by_role("row").filter(has_text=run.info.run_name)
                expect(row).to_contain_text(f"{run.data.metrics['test_accuracy']:.4f}".rstrip("0"), timeout=60_000)
        finally:
            browser.close()
    assert screenshot.read_bytes().startswith(PNG_MAGIC)
