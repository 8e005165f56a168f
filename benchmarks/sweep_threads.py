"""Does a parallel sweep pay? The same sweep through DVC's queue with 1 and 2 jobs.

    MNIST_MIRROR=<dir or URL> python benchmarks/sweep_threads.py [--epochs 10]

A sweep of 4 experiments (fp32 and bf16, 2 seeds each) run by `dvc queue
start --jobs 1`, then `--jobs 2` (the thread budget of `train.threads: auto`
shares the cores), then `--jobs 2` with `OMP_NUM_THREADS=1` exported by hand
(the reference); each sweep in a fresh copy of the project of its own, so no
store or run cache is shared. Then, in the `--jobs 2` copy, each precision
alone with the thread count the `--jobs 2` runs used. It prints the
wall times, each run's logged samples/s and threads, and as its last line one
JSON object of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from mlflow import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


class Project:
    def __init__(self, root: Path, epochs: int):
        self.root = root
        for name in subprocess.run(
            ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.split():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"]["epochs"] = epochs
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "OMP_"))}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        for command in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "-A"],
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "p"],
        ):
            self.run(*command)
        self.run("dvc", "repro", "download")

    def run(self, *command: str, **env: str) -> str:
        return subprocess.run(
            command, cwd=self.root, env=self.env | env, capture_output=True, text=True, check=True
        ).stdout

    def sweep(self, jobs: int, seeds: tuple[int, int], **env: str) -> float:
        """Queue the 4 experiments, run them with `jobs` workers; the wall time until all are done."""
        self.run(
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            f"precision={','.join(PRECISIONS)}",
            "-S",
            f"seed={','.join(map(str, seeds))}",
        )
        started = time.monotonic()
        self.run("dvc", "queue", "start", "--jobs", str(jobs), **env)
        while True:
            status = self.run("dvc", "queue", "status")
            if not any(word in status for word in ("Queued", "Running")):
                break
            time.sleep(1)
        wall = time.monotonic() - started
        assert status.count("Success") >= 4, status
        self.stop_queue()
        return wall

    def stop_queue(self) -> None:
        """Stop the workers and wait until their processes are gone (`dvc queue
        status` says "0 active" while they still finish a task)."""
        self.run("dvc", "queue", "stop")
        psutil.wait_procs(
            [
                process
                for process in psutil.process_iter(["cmdline", "cwd"])
                if "queue-worker" in (process.info["cmdline"] or []) and process.info["cwd"] == str(self.root)
            ],
            timeout=300,
        )

    def runs(self, seeds: tuple[int, ...]) -> list[dict]:
        client = MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("mnist-precision")
        return [
            {
                "precision": r.data.params["precision"],
                "seed": int(r.data.params["seed"]),
                "threads": int(r.data.params["threads"]),
                "threads_from": r.data.params["threads_from"],
                "samples_per_s": r.data.metrics["samples_per_s"],
            }
            for r in client.search_runs([experiment.experiment_id])
            if int(r.data.params["seed"]) in seeds and r.info.status == "FINISHED"
        ]

    def alone(self, precision: str, seed: int, threads: int) -> float:
        self.run(
            "dvc", "exp", "run", "-S", f"precision={precision}", "-S", f"seed={seed}", "-S", f"train.threads={threads}"
        )
        return json.loads((self.root / "metrics" / "train.json").read_text())["samples_per_s"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    sweeps = {
        "jobs 1": ((0, 1), 1, {}),
        "jobs 2": ((2, 3), 2, {}),
        "jobs 2, OMP_NUM_THREADS=1": ((4, 5), 2, {"OMP_NUM_THREADS": "1"}),
    }
    walls, runs = {}, {}
    for name, (seeds, jobs, env) in sweeps.items():
        # A fresh copy for each sweep: no sweep shares a store or a run cache with another.
        with tempfile.TemporaryDirectory() as work:
            project = Project(Path(work), args.epochs)
            walls[name] = project.sweep(jobs, seeds, **env)
            runs[name] = project.runs(seeds)
            print(f"{name}: {walls[name]:.0f} s", file=sys.stderr)
            if name == "jobs 2":
                threads = {run["precision"]: run["threads"] for run in runs[name]}
                alone = {p: project.alone(p, 6, threads[p]) for p in PRECISIONS}

    print(f"# A sweep of 4 experiments ({', '.join(PRECISIONS)} x 2 seeds, {args.epochs} epochs) through DVC's queue\n")
    print("| sweep | wall s | vs jobs 1 | run: precision, seed, threads, samples/s |")
    print("| --- | ---: | ---: | --- |")
    for name, wall in walls.items():
        rows = "; ".join(
            f"{r['precision']} {r['seed']}: {r['threads']} ({r['threads_from']}), {r['samples_per_s']:,.0f}"
            for r in sorted(runs[name], key=lambda r: (r["precision"], r["seed"]))
        )
        print(f"| {name} | {wall:.0f} | {wall / walls['jobs 1']:.2f}x | {rows} |")
    print("\n| precision | alone, threads | alone samples/s | in the jobs 2 sweep (mean) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    figures = {
        "jobs2_vs_jobs1_wall": walls["jobs 2"] / walls["jobs 1"],
        "jobs2_omp1_vs_jobs1_wall": walls["jobs 2, OMP_NUM_THREADS=1"] / walls["jobs 1"],
        **{f"wall_s_{name.replace(' ', '_').replace(',', '').replace('=', '')}": w for name, w in walls.items()},
    }
    for p in PRECISIONS:
        swept = statistics.fmean(r["samples_per_s"] for r in runs["jobs 2"] if r["precision"] == p)
        print(f"| {p} | {threads[p]} | {alone[p]:,.0f} | {swept:,.0f} | {swept / alone[p]:.2f} |")
        figures[f"{p}_jobs2_vs_alone_samples_per_s"] = swept / alone[p]
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
