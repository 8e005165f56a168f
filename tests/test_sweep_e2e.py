"""The comparison workflow, end to end: a precisions x seeds sweep through DVC's
queue on two workers, the report, and the MLflow UI in a real browser."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
import torch

from helpers import Project, free_port, make_project, running_queue, start_mlflow_server, wait_for_queue
from mnist_precision.device import cpu_features

pytestmark = pytest.mark.slow

PRECISIONS, SEEDS = ("fp32", "fp16"), (0, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mnist_mirror) -> Project:
    """4 experiments, 2 at a time, against a store that does not exist yet."""
    project = make_project(tmp_path_factory.mktemp("sweep"), mnist_mirror)
    # One thread each, set: the report compares throughput within one thread count
    # only, and the budget's count depends on which experiments overlap.
    project.run("dvc", "exp", "run", "--queue", "-S", f"precision={','.join(PRECISIONS)}",
                "-S", f"seed={','.join(map(str, SEEDS))}", "-S", "train.threads=1")
    with running_queue(project, jobs=2):
        status = wait_for_queue(project, timeout=900)
    assert status.count("Success") == 4, status
    return project


def test_two_workers_on_one_sqlite_store_lose_nothing(swept):
    client, _, runs = swept.mlflow_runs()
    assert sorted((r.data.params["precision"], int(r.data.params["seed"])) for r in runs) == \
        sorted((p, s) for p in PRECISIONS for s in SEEDS)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] >= 0.90
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
        # MLflow's system metrics: what the run cost the machine.
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


def test_dvc_exp_show_lists_precision_seed_accuracy_and_throughput(swept):
    table = json.loads(swept.run("dvc", "exp", "show", "--json").stdout)
    rows = [exp for commit in table for exp in (commit.get("experiments") or [])]
    seen = set()
    for row in rows:
        data = row["revs"][0]["data"]
        params = data["params"]["params.yaml"]["data"]
        metrics = data["metrics"]
        seen.add((params["precision"], params["seed"]))
        assert metrics["metrics/evaluate.json"]["data"]["test_accuracy"] >= 0.90
        assert metrics["metrics/train.json"]["data"]["samples_per_s"] > 0
    assert seen == {(p, s) for p in PRECISIONS for s in SEEDS}


def test_report_compares_each_reduced_precision_with_fp32(swept):
    result = swept.run("mnist-precision", "report")
    assert "| fp16 | 2 vs 2 |" in result.stdout  # the verdict table, in the terminal
    # What the device offers for each precision, beside the group.
    assert f"{torch.backends.cpu.get_cpu_capability()}, features {','.join(cpu_features()) or 'none'}, 1 threads)" \
        in result.stdout
    report = (swept.root / "reports" / "precision.md").read_text()
    verdict = report.split("### Verdict", 1)[1].split("###", 1)[0]
    rows = [line for line in verdict.splitlines() if line.startswith("| fp16") or line.startswith("| bf16")]
    assert len(rows) == 1 and rows[0].startswith("| fp16 | 2 vs 2 | ")
    assert "paired t, 2 seeds" in verdict
    assert "[" in rows[0]  # an interval, not a bare estimate
    figures = sorted((swept.root / "reports").glob("*.png"))
    assert [f.name for f in figures] == ["group1-accuracy.png", "group1-costs.png", "group1-loss-scale.png",
                                         "group1-loss.png", "group1-lost-updates.png", "group1-underflow.png"]
    claims = report.split("## The claims, measured", 1)[1].split("## Group 1", 1)[0]
    assert "**Half precision halves storage.**\n- Yes, on cpu (" in claims
    assert "- On a GPU: not measured, no GPU runs in this store" in claims and "fp16 0." in claims
    assert "Not measured: no fp16-true or bf16-true runs in this store" in claims
    # The fp16 runs' activation gradients, against fp16's range, from the run's own histogram artifact.
    assert "Activation gradients of one sampled step against fp16's range (run " in report
    assert "(fp16, seed 0), its last sampled step)" in report
    for figure in figures:
        data = figure.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"]({figure.name})" in report

    client, experiment, runs = swept.mlflow_runs()
    assert len(runs) == 4  # the summary never mixes with the training runs
    summaries = client.search_runs([client.get_experiment_by_name("mnist-precision-reports").experiment_id])
    assert len(summaries) == 1
    assert summaries[0].data.tags["mnist_precision.run_type"] == "summary"
    assert {a.path for a in client.list_artifacts(summaries[0].info.run_id, "report")} == {
        "report/precision.md", *(f"report/{f.name}" for f in figures)}


def test_report_says_when_there_are_too_few_seeds(swept, tmp_path):
    client, experiment, runs = swept.mlflow_runs()
    one_seed = next(r for r in runs if r.data.params["seed"] == "1" and r.data.params["precision"] == "fp16")
    client.delete_run(one_seed.info.run_id)
    try:
        result = swept.run("mnist-precision", "report", "--out", str(tmp_path / "few.md"))
    finally:
        client.restore_run(one_seed.info.run_id)
    assert "no interval: too few seeds" in result.stdout
    assert "| fp16 | 1 vs 2 |" in (tmp_path / "few.md").read_text()


@pytest.fixture
def mlflow_server(swept) -> Iterator[str]:
    """The README's command, on a free port; stopped (SIGTERM) after the test."""
    port = free_port()
    with start_mlflow_server(swept.root, port, f"sqlite:///{swept.root / 'mlflow.db'}", swept.env):
        yield f"http://127.0.0.1:{port}"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.needs_chromium
def test_mlflow_ui_lists_and_compares_the_runs_in_a_real_browser(swept, mlflow_server):
    from playwright.sync_api import expect, sync_playwright

    client, experiment, runs = swept.mlflow_runs()
    fp32 = next(r for r in runs if r.data.params["precision"] == "fp32" and r.data.params["seed"] == "0")
    fp16 = next(r for r in runs if r.data.params["precision"] == "fp16" and r.data.params["seed"] == "0")
    screenshot = swept.root / "reports" / "mlflow-compare.png"
    screenshot.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs")
            for run in runs:
                expect(page.get_by_text(run.info.run_name, exact=True)).to_be_visible(timeout=60_000)
            # The UI knows each run's precision and test accuracy: filter on them.
            search = page.locator("input[placeholder*='metrics.rmse']")
            search.fill('params.precision = "fp16" and metrics.test_accuracy >= 0.9')
            search.press("Enter")
            expect(page.get_by_text(fp16.info.run_name, exact=True)).to_be_visible(timeout=30_000)
            expect(page.get_by_text(fp32.info.run_name, exact=True)).to_have_count(0, timeout=30_000)
            expect(page.get_by_text("2 matching runs")).to_be_visible()

            ids = json.dumps([fp32.info.run_id, fp16.info.run_id])
            experiments = json.dumps([experiment.experiment_id])
            page.goto(f"{mlflow_server}/#/compare-runs?runs={ids}&experiments={experiments}")
            expect(page.get_by_role("row", name="precision fp32 fp16")).to_be_visible(timeout=60_000)
            for run in (fp32, fp16):
                expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible()
            page.screenshot(path=str(screenshot), full_page=True)

            # The comparison's test_accuracy (the compare page's metric grid renders
            # only the rows in view; this is where its test_accuracy link leads).
            page.goto(f'{mlflow_server}/#/metric?runs={ids}&metric="test_accuracy"&experiments={experiments}'
                      '&plot_metric_keys=["test_accuracy"]')
            for run in (fp32, fp16):
                row = page.get_by_role("row").filter(has_text=run.info.run_name)
                expect(row).to_contain_text(f"{run.data.metrics['test_accuracy']:.4f}".rstrip("0"), timeout=60_000)
        finally:
            browser.close()
    assert screenshot.read_bytes().startswith(PNG_MAGIC)
