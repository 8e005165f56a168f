"""The stages' start-up under two Python interpreters, side by side.

    python benchmarks/interpreters.py VENV_A/bin/python VENV_B/bin/python [--rounds 5]

Each interpreter is a virtual environment's, with the project installed in it
(`pip install -e .`). In alternating rounds, each times in a process of its
own: `import torch, mlflow` (and what the stages import beside them), then the
train stage (1 epoch cut to 100 steps, one thread, the store already made by
a warm-up run) and the evaluate stage, in one temporary folder laid out like
the project (params.yaml, data/mnist). It prints each one's CPU seconds (user
+ system, the median over rounds) and wall seconds, B against A, and as its
last line one JSON object.

Why: the slow tier of the tests is mostly stage processes starting up
(docs/testing.md), and these machines' default python3 is a pyenv build made
without PGO and LTO (no --enable-optimizations), while Debian builds its
python3 with both (its changelog; its sysconfig does not say so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stage_folder import stage_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import torch, mlflow, mlflow.pytorch, matplotlib.pyplot; from mlflow.store.tracking import sqlalchemy_store"
TASKS = {
    "import": ["-c", IMPORTS],
    "train": [str(REPO_ROOT / "stages" / "train.py")],
    "evaluate": [str(REPO_ROOT / "stages" / "evaluate.py")],
}


def timed(python: str, args: list[str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one process; it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            [python, *args], cwd=cwd, env=env | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=errors
        )
        _, status, usage = os.wait4(process.pid, 0)  # the child's own CPU, which Popen.wait does not give
        wall = time.perf_counter() - started
        if (code := os.waitstatus_to_exitcode(status)) != 0:
            errors.seek(0)
            sys.exit(f"{python} {' '.join(args)} exited {code}:\n{errors.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def measure(pythons: list[str], data: Path, rounds: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    figures = {python: {task: [] for task in TASKS} for python in pythons}
    with tempfile.TemporaryDirectory() as work:
        root = stage_folder(Path(work), data, {"epochs": 1, "max_steps": 100, "threads": 1})
        for python in pythons:  # warm-up: the store, the page cache
            for args in TASKS.values():
                timed(python, args, root)
        for round_ in range(rounds):
            for python in pythons if round_ % 2 == 0 else reversed(pythons):
                for task, args in TASKS.items():
                    figures[python][task].append(timed(python, args, root))
    return figures


def describe(python: str) -> str:
    """Which interpreter a virtual environment's python is (its build flags are
    not a reliable witness: Debian's sysconfig leaves out its PGO and LTO)."""
    where = subprocess.run(
        [python, "-c", "import os, sys; print(sys.version.split()[0], os.path.realpath(sys.executable))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{python}: Python {where[0]}, {where[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pythons", nargs=2, metavar="PYTHON")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "mnist")
    args = parser.parse_args()
    # Absolute, since the stages run in another folder; not resolved, or a venv's python would lose its venv.
    pythons = [os.path.abspath(python) for python in args.pythons]
    a, b = pythons
    figures = measure(pythons, args.data, args.rounds)
    print(f"A: {describe(a)}\nB: {describe(b)}\n{args.rounds} rounds, medians\n")
    print("| process | A CPU s | B CPU s | B/A CPU | A wall s | B wall s |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    ratios = {}
    for task in TASKS:
        cpu = {p: statistics.median(c for c, _ in figures[p][task]) for p in (a, b)}
        wall = {p: statistics.median(w for _, w in figures[p][task]) for p in (a, b)}
        ratios[f"{task}_cpu_b_over_a"] = cpu[b] / cpu[a]
        print(f"| {task} | {cpu[a]:.2f} | {cpu[b]:.2f} | {cpu[b] / cpu[a]:.2f} | {wall[a]:.2f} | {wall[b]:.2f} |")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
