"""How many intra-op threads a stage takes: its share of the machine's cores.

PyTorch starts one busy-waiting OpenMP thread per core in every process. Two
experiments of DVC's queue side by side (`dvc queue start --jobs 2`) then run
twice as many threads as there are cores, and each spends its time waiting
for the other, so that two jobs take longer than one
(benchmarks/sweep_threads.py, results/cpu_sweeps.md). So each stage counts the experiments
of its repository that run now and takes `cores // count` threads.

The count is of DVC's experiment workspaces (`.dvc/tmp/exps/<copy>`) in which
a process is working (a crashed experiment's leftover copy has none), plus
the stage's own workspace when it runs outside the queue. An explicit
`train.threads`, or `OMP_NUM_THREADS` in the environment (torchrun sets it for
its ranks), wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from mnist_precision.base.paths import DVC_QUEUE_DIR, repo_root


@dataclass(frozen=True)
class Budget:
    threads: int
    why: str  # logged beside the count


def experiment_workspaces(root: Path) -> set[Path]:
    """The copies under <root>/.dvc/tmp/exps/ with a live process working in them."""
    queue = root.joinpath(*DVC_QUEUE_DIR)
    if not queue.is_dir():
        return set()
    copies = {path.resolve() for path in queue.iterdir() if path.is_dir()}
    busy: set[Path] = set()
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if cwd:
            busy.update(copy for copy in copies if Path(cwd).is_relative_to(copy))
    return busy


def concurrent_experiments(cwd: Path | None = None) -> int:
    """How many experiments of this repository run now, this one included."""
    cwd = (cwd or Path.cwd()).resolve()
    root = repo_root(cwd)
    busy = experiment_workspaces(root)
    inside_queue = any(cwd.is_relative_to(copy) for copy in busy)
    return len(busy) + (0 if inside_queue else 1)


def budget(setting: int | str, cores: int | None = None) -> Budget:
    """The thread count for `train.threads` (`auto` or a number)."""
    if setting != "auto":
        return Budget(int(setting), "train.threads")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return Budget(int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    cores = cores or len(os.sched_getaffinity(0))
    running = concurrent_experiments()
    return Budget(max(1, cores // running), f"{cores} cores shared by {running} experiment(s) of this repository")
