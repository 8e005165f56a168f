"""What a short experiment pays besides training, and where every second goes.

    MNIST_MIRROR=<dir or URL> python benchmarks/experiment_overhead.py [--base d62a2fd] [--repeats 5]

Two fresh copies of the project, each in a git repository of its own with its
data downloaded: this checkout's commit (HEAD) and `--base`. In alternation,
`--repeats` times each, `dvc exp run -S train.epochs=1 -S seed=<n>` (a new
seed each time, so DVC's run-cache restores nothing). A `python` placed first
on the PATH of `dvc` records when each stage process starts and ends, so the
wall splits into DVC's own time and each stage's process; the fixed cost is
the wall minus the run's `train_seconds`. Then one more experiment of HEAD
under `python -X importtime` and cProfile splits each stage process into its
imports, the MLflow store and run, the model's logging, and training. Last,
`--long-repeats` experiments of `--long-epochs` epochs each, alternated the
same way: what a longer experiment's wall gained or lost. And a sweep of
`--sweep` one-epoch experiments through DVC's queue on `--sweep-jobs`
workers, once per commit: experiments per hour.
Alternated with the experiments, the least any experiment of these four
stages can cost under the libraries this project keeps (the "floor"): DVC's
own time for an experiment of a one-stage pipeline that runs `true`, and a
bare Python process that only imports what the train stage must (torch,
MLflow, MLflow's SQLAlchemy store, torch._dynamo, which torch.optim imports)
and one that imports what evaluate must (the same without torch._dynamo),
each exiting as the stages do (`gc.freeze()`).
Writes benchmarks/results/experiment_overhead.md, and the figures the README
quotes to experiment_overhead.json beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_precision.analysis.stats import ratio_of_means
from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.environment import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "environment", "train", "evaluate")
# The shim that stands in for `python` on dvc's PATH: it records each stage
# process's start and end, and under PROFILE runs it with -X importtime and cProfile.
SHIM = """#!/bin/sh
start=$(date +%s.%N)
stage="$TIMES/$(basename "$1" .py)"
if [ -n "$PROFILE" ]; then
  "$REAL_PYTHON" -X importtime -m cProfile -o "$stage.prof" "$@" 2>"$stage.imports"
else
  "$REAL_PYTHON" "$@"
fi
code=$?
echo "$(basename "$1" .py) $start $(date +%s.%N)" >> "$TIMES/processes"
exit $code
"""
# What each stage process cannot do without under the rules, and
# nothing else: its libraries, MLflow's run lifecycle on the SQLite store, and
# in train a logged model with its signature. It exits as the stages do.
STAGE_FLOORS = {
    "train": """
import gc
import mlflow, mlflow.store.tracking.sqlalchemy_store, torch, torch._dynamo
from mlflow.models import infer_signature
mlflow.set_tracking_uri("sqlite:///floor.db")
with mlflow.start_run():
    model, pixels = torch.nn.Linear(784, 10), torch.zeros(1, 784)
    signature = infer_signature(pixels.numpy(), model(pixels).detach().numpy())
    mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=pixels.numpy(),
                             pip_requirements=["torch"])
gc.freeze()
""",
    "evaluate": """
import gc
import mlflow, mlflow.store.tracking.sqlalchemy_store, torch
mlflow.set_tracking_uri("sqlite:///floor.db")
with mlflow.start_run():
    mlflow.log_metric("test_accuracy", 1.0)
gc.freeze()
""",
}
NO_OP_STAGE = "stages:\n  no-op:\n    cmd: 'true'\n    params: [seed]\n"
# The figures of an experiment the README quotes (seconds).
STAGE_KEYS = ("wall", "train_seconds", "fixed", "dvc", "process train", "process evaluate", "process environment")
# What each profiled phase is, by the function cProfile found it under (cumulative seconds).
PHASES = {
    "MLflow store: open it, get or create the experiment": ("store.py", "configure"),
    "MLflow run: start it": ("fluent.py", "start_run"),
    "MLflow run: end it": ("fluent.py", "end_run"),
    "log the model (export, signature, requirements)": ("training_run.py", "log_model"),
    "of which torch.export of the served model": ("torch/export/__init__.py", "export"),
    "of which MLflow's check of its requirements against the environment": (
        "requirements_utils.py",
        "warn_dependency_requirement_mismatches",
    ),
    "build the optimizer (torch.optim imports torch._dynamo)": ("optim/optimizer.py", "__init__"),
    "register the model": ("registry.py", "register"),
    "log the datasets": ("lineage.py", "log_split"),
    "training (the loop)": ("training.py", "train"),
    "evaluation (the test set, twice)": ("evaluation.py", "evaluate"),
}


class Copy:
    """The project at `rev`, in a fresh git repository with its data."""

    def __init__(self, root: Path, rev: str, times: Path):
        subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(root)], check=True)
        subprocess.run(["git", "checkout", "-q", rev], cwd=root, check=True)
        self.root, self.times = root, times
        shim = times / "bin" / "python"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(SHIM)
        shim.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "OMP_"))}
        self.env |= {
            # The copy's own code, before the editable install of this checkout.
            "PYTHONPATH": str(root / "src"),
            "PATH": f"{shim.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "REAL_PYTHON": sys.executable,
            "TIMES": str(times),
            "DVC_NO_ANALYTICS": "1",
        }
        self.run("dvc", "repro", "download")

    def run(self, *command: str, **env: str) -> str:
        return subprocess.run(
            command, cwd=self.root, env=self.env | env, capture_output=True, text=True, check=True
        ).stdout

    def experiment(self, seed: int, epochs: int = 1, **env: str) -> dict[str, float]:
        """One experiment: its wall, each stage process's, DVC's own and the fixed cost."""
        (self.times / "processes").unlink(missing_ok=True)
        started = time.perf_counter()
        self.run("dvc", "exp", "run", "-S", f"train.epochs={epochs}", "-S", f"seed={seed}", **env)
        wall = time.perf_counter() - started
        processes: dict[str, float] = {}
        for line in (self.times / "processes").read_text().splitlines():
            name, start, end = line.split()
            processes[name] = processes.get(name, 0.0) + float(end) - float(start)
        train_seconds = json.loads((self.root / "metrics" / "train.json").read_text())["train_seconds"]
        return {
            "wall": wall,
            "train_seconds": train_seconds,
            "fixed": wall - train_seconds,
            "dvc": wall - sum(processes.values()),
            **{f"process {name}": seconds for name, seconds in processes.items()},
        }


class Floor:
    """The least an experiment of the four stages can cost: DVC's time for a
    one-stage experiment that does nothing, plus the train and evaluate
    processes reduced to `STAGE_FLOORS`. The environment stage, the training
    and everything this project does itself count as nothing."""

    def __init__(self, root: Path, env: dict[str, str]):
        root.mkdir()
        self.root, self.env = root, env
        for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            subprocess.run(command, cwd=root, env=env, check=True)
        (root / "params.yaml").write_text("seed: 0\n")
        (root / "dvc.yaml").write_text(NO_OP_STAGE)
        for stage, script in STAGE_FLOORS.items():
            (root / f"{stage}_floor.py").write_text(script)
        subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
        subprocess.run(["git", "commit", "-qm", "no-op"], cwd=root, env=env, check=True)
        self.timed(sys.executable, "train_floor.py")  # creates floor.db, as each copy has its mlflow.db

    def measure(self, seed: int) -> dict[str, float]:
        found = {"dvc, a one-stage no-op experiment": self.timed("dvc", "exp", "run", "-S", f"seed={seed}")}
        for stage in STAGE_FLOORS:
            found[f"process {stage}, reduced"] = self.timed(sys.executable, f"{stage}_floor.py")
        found["floor"] = sum(found.values())
        return found

    def timed(self, *command: str) -> float:
        started = time.perf_counter()
        subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, check=True)
        return time.perf_counter() - started


def top_level_imports(log: Path) -> dict[str, float]:
    """Seconds of each top-level import in a `-X importtime` log (one imported
    inside a function is top-level too: it was not imported before)."""
    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if line.startswith("import time:") and "|" in line:
            cumulative, name = line.split("|")[1:3]
            # A top-level import's name has one leading space; nested ones are indented further.
            if cumulative.strip().isdigit() and not name.startswith("  "):
                found[name.strip()] = found.get(name.strip(), 0.0) + int(cumulative) / 1e6
    return found


def sweep(copy: Copy, experiments: int, jobs: int) -> float:
    """Seconds of `experiments` one-epoch experiments (fp32 and bf16, new
    seeds) run from DVC's queue by `jobs` workers."""
    seeds = ",".join(str(200 + i) for i in range(experiments // 2))
    copy.run("dvc", "exp", "run", "--queue", "-S", "precision=fp32,bf16", "-S", f"seed={seeds}", "-S", "train.epochs=1")
    started = time.perf_counter()
    copy.run("dvc", "exp", "run", "--run-all", "--jobs", str(jobs))
    return time.perf_counter() - started


def profile(copy: Copy) -> list[tuple[str, str, float]]:
    """(stage, phase, seconds) of one experiment run under cProfile and -X importtime."""
    copy.experiment(10_000, PROFILE="1")
    rows = []
    for stage in ("environment", "train", "evaluate"):
        imports = top_level_imports(copy.times / f"{stage}.imports")
        rows.append((stage, "imports (-X importtime, top level)", sum(imports.values())))
        biggest = sorted(imports.items(), key=lambda item: -item[1])[:4]
        rows += [(stage, f"of which `import {name}`", seconds) for name, seconds in biggest if seconds >= 0.1]
        stats = pstats.Stats(str(copy.times / f"{stage}.prof")).stats  # type: ignore[attr-defined]
        for phase, (file, function) in PHASES.items():
            seconds = sum(v[3] for (path, _, name), v in stats.items() if path.endswith(file) and name == function)
            if seconds:
                rows.append((stage, phase, seconds))
    return rows


def table(label: str, results: list[dict[str, float]]) -> list[str]:
    keys = sorted({key for result in results for key in result}, key=lambda k: (not k.startswith("wall"), k))
    return [f"| {label}: {key} | {statistics.median(r.get(key, 0.0) for r in results):.2f} |" for key in keys]


Runs = dict[str, list[dict[str, float]]]  # commit -> one dict of figures per experiment


@dataclass
class Measured:
    base: str
    head: str
    short: Runs  # one-epoch experiments
    longer: Runs  # `--long-epochs` experiments
    phases: list[tuple[str, str, float]]  # one profiled experiment of head
    sweeps: dict[str, float]  # commit -> wall of the queued sweep
    floor: list[dict[str, float]]  # Floor.measure of each repeat of `short`


def ratio(new: list[dict[str, float]], base: list[dict[str, float]], key: str, base_key: str = "") -> dict:
    """`key` of `new` over `base_key` (else `key`) of `base`, paired by repeat, with its 95% interval."""
    found = ratio_of_means(dict(enumerate(r[key] for r in new)), dict(enumerate(r[base_key or key] for r in base)))
    bounded = found.low is not None and found.high is not None and not math.isnan(found.low)
    return {
        "estimate": found.estimate,
        "low": found.low if bounded else None,
        "high": found.high if bounded else None,
        "method": found.method,
    }


def said(found: dict) -> str:
    interval = f" [{found['low']:.2f}, {found['high']:.2f}]" if found["low"] is not None else ""
    return f"{found['estimate']:.2f}x{interval} ({found['method']})"


def measure(args: argparse.Namespace, head: str) -> Measured:
    folder = Path(tempfile.mkdtemp(prefix="experiment-overhead-"))
    try:
        copies = {rev: Copy(folder / rev, rev, folder / f"times-{rev}") for rev in (args.base, head)}
        floor = Floor(folder / "no-op", copies[head].env)
        short: Runs = {rev: [] for rev in copies}
        floors = []
        for repeat in range(args.repeats):
            for rev, copy in copies.items():
                short[rev].append(copy.experiment(seed=repeat))
            floors.append(floor.measure(seed=repeat))
        phases = profile(copies[head])
        longer: Runs = {rev: [] for rev in copies}
        for repeat in range(args.long_repeats):
            for rev, copy in copies.items():
                longer[rev].append(copy.experiment(seed=100 + repeat, epochs=args.long_epochs))
        sweeps = {rev: sweep(copy, args.sweep, args.sweep_jobs) for rev, copy in copies.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Measured(args.base, head, short, longer, phases, sweeps, floors)


def summary(measured: Measured, args: argparse.Namespace) -> dict:
    """What docs/generate.py puts in the README: medians of head, and both ratios."""
    medians = {key: statistics.median(r.get(key, 0.0) for r in measured.short[measured.head]) for key in STAGE_KEYS}
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "base": measured.base,
        "head": measured.head,
        "head_medians_s": medians,
        "fixed_vs_base": ratio(measured.short[measured.head], measured.short[measured.base], "fixed"),
        "floor_s": {key: statistics.median(f[key] for f in measured.floor) for key in measured.floor[0]},
        "floor_vs_base": ratio(measured.floor, measured.short[measured.base], "floor", "fixed"),
        "long_epochs": args.long_epochs,
        "long_wall_vs_base": ratio(measured.longer[measured.head], measured.longer[measured.base], "wall"),
        "sweep": {
            "experiments": args.sweep,
            "jobs": args.sweep_jobs,
            "per_hour": {rev: args.sweep * 3600 / wall for rev, wall in measured.sweeps.items()},
        },
    }


def page(measured: Measured, args: argparse.Namespace, found: dict) -> str:
    base, head = measured.base, measured.head
    lines = [
        "# What a short experiment pays besides training",
        "",
        f"`python benchmarks/experiment_overhead.py`, {found['date']}, {found['machine']}: "
        "`dvc exp run -S train.epochs=1` in a fresh copy of each commit with its data, "
        f"alternated {args.repeats} times (medians, seconds). Fixed cost = wall - `train_seconds`.",
        "",
        "| commit: part | s |",
        "| --- | ---: |",
        *table(base, measured.short[base]),
        *table(head, measured.short[head]),
        "",
        f"Fixed cost, {head} against {base}: {said(found['fixed_vs_base'])}.",
        "",
        "The floor: the least an experiment of these four stages can cost while each stage is a Python "
        "process that imports the libraries it uses, measured in the same alternation (medians, seconds). "
        "DVC's own time for an experiment of a one-stage pipeline whose command is `true`, and for train "
        "and evaluate a bare process that does only what the issue's rules keep: it imports the stage's "
        "libraries (torch, MLflow and its SQLAlchemy store, and in train torch._dynamo, which torch.optim "
        "imports), runs MLflow's run lifecycle on a SQLite store, logs a model with its signature (train) "
        "or a metric (evaluate), and exits as the stages do (`gc.freeze()`). Training, the environment "
        "stage and all of this project's own work count as nothing.",
        "",
        "| part | what | s |",
        "| --- | --- | ---: |",
        f"| dvc, a one-stage no-op experiment | `dvc exp run -S seed=<n>` of `{NO_OP_STAGE.splitlines()[2].strip()}` | "
        f"{found['floor_s']['dvc, a one-stage no-op experiment']:.2f} |",
        *(
            f"| process {stage}, reduced | `python {stage}_floor.py` (`STAGE_FLOORS` in the benchmark) | "
            f"{found['floor_s'][f'process {stage}, reduced']:.2f} |"
            for stage in STAGE_FLOORS
        ),
        f"| floor | the sum | {found['floor_s']['floor']:.2f} |",
        "",
        f"Floor against {base}'s fixed cost: {said(found['floor_vs_base'])}.",
        "",
        f"Inside the stage processes of one more experiment of {head}, under cProfile "
        "(which slows Python code; cumulative seconds, a phase may contain another):",
        "",
        "| stage | phase | s |",
        "| --- | --- | ---: |",
        *(f"| {stage} | {phase} | {seconds:.2f} |" for stage, phase, seconds in measured.phases),
        "",
        f"`dvc exp run -S train.epochs={args.long_epochs}`, alternated {args.long_repeats} times (medians, seconds):",
        "",
        "| commit: part | s |",
        "| --- | ---: |",
        *table(base, measured.longer[base]),
        *table(head, measured.longer[head]),
        "",
        f"Wall of {args.long_epochs} epochs, {head} against {base}: {said(found['long_wall_vs_base'])}.",
        "",
        f"A sweep of {args.sweep} one-epoch experiments (fp32 and bf16, {args.sweep // 2} seeds) queued, then "
        f"`dvc exp run --run-all --jobs {args.sweep_jobs}`, once per commit ({base} first):",
        "",
        "| commit | wall, s | experiments per hour |",
        "| --- | ---: | ---: |",
        *(f"| {rev} | {wall:.1f} | {found['sweep']['per_hour'][rev]:.0f} |" for rev, wall in measured.sweeps.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="d62a2fd", help="the commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-epochs", type=int, default=5)
    parser.add_argument("--long-repeats", type=int, default=3)
    parser.add_argument("--sweep", type=int, default=12, help="experiments in the queued sweep (even)")
    parser.add_argument("--sweep-jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "experiment_overhead.md")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    measured = measure(args, head.stdout.strip())
    found = summary(measured, args)
    atomic_write_bytes(args.out.with_suffix(".json"), (json.dumps(found, indent=2) + "\n").encode())
    atomic_write_bytes(args.out, page(measured, args, found).encode())
    print(page(measured, args, found))


if __name__ == "__main__":
    main()
