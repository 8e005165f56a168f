"""Training speed of each precision, measured side by side in one process.

    python benchmarks/train_speed.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/train_speed.py --quick    # tiny sizes, under 2 minutes
    python benchmarks/train_speed.py --keep-freed-memory   # glibc keeps freed memory (see README)
    python benchmarks/train_speed.py --device cuda --compile   # on a GPU (see gpu_check.sh)

For every precision it times the project's own training step (`TrainStep`
over `shuffled_batches`, as the train stage runs it) after warm-up, on:

- reference:   the params.yaml recipe, one hidden layer of 256, batch 64;
- reference-bare-update: the same in fp32, with torch.optim.SGD replaced by a
               bare `torch._foreach_add_` update: what the stock optimizer costs;
- wide:        two hidden layers of 4096, batch 512, where arithmetic dominates;
- seed-loader: the seed tutorial's input pipeline (torchvision MNIST with
               ToTensor + Normalize through a DataLoader), same model, fp32;
- ceiling:     a large matrix multiply in each dtype: what the machine achieves;
- data-parallel: on the CPU, the reference step in one plain process and in
               2 processes under torchrun (DDP over gloo), by ddp_steps.py;
- reference-adamw: the reference network with AdamW instead of SGD, every precision;
- diagnostics: what measuring the numerics on a sampled step costs, as a share
               of an epoch at params.yaml's diagnostics.every_steps (fp32, bf16,
               bf16-true-sr, and fp32 with AdamW, whose fp32 shadow steps too).

Every precision the device runs is timed; those it refuses (tf32 and fp8 off
the GPUs that have them) are listed as skipped.

Each row has a time budget: the number of timed steps shrinks for a step too
slow to fit it (fp16 on a CPU without native fp16, say), so the run stays bounded.

It prints a Markdown table and, as its last line, one JSON object with the
ratios documented in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from stage_folder import stage_folder

from mnist_precision.analysis.crossover.timing import Clock, training_flops_per_sample
from mnist_precision.base import paths
from mnist_precision.base.params import TrainParams, load
from mnist_precision.base.precision_table import BASELINE
from mnist_precision.base.precision_table import NAMES as PRECISIONS
from mnist_precision.base.precision_table import PRECISIONS as TABLE
from mnist_precision.core.data import MEAN, STD, Split, load_split, shuffled_batches
from mnist_precision.core.device import device_name, refusal, resolve_device
from mnist_precision.core.download import download_mnist
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import SGD, OptimizerChoice, make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import TrainStep, make_diagnostics

REPO_ROOT = Path(__file__).resolve().parents[1]
# The matrix products each precision's ceiling is measured with: its dtype, and TF32 on or off.
# (fp8's own ceiling, torch._scaled_mm, is not measured: it is set against bf16's.)
CEILINGS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}
CEILING_OF = {
    name: "tf32"
    if TABLE[name].tf32
    else {"float16": "fp16", "bfloat16": "bf16"}.get(TABLE[name].autocast_dtype or TABLE[name].param_dtype, "fp32")
    for name in PRECISIONS
}
ADAMW = OptimizerChoice("adamw")
# What the diagnostics' cost is measured on: mixed, stochastic rounding, and AdamW's fp32 shadow.
DIAGNOSED = ((BASELINE, SGD), ("bf16", SGD), ("bf16-true-sr", SGD), (BASELINE, ADAMW))
# glibc's malloc, told through its own environment variables (mallopt(3)) to
# keep freed memory in the heap: no mmap for big blocks, no trimming.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)}


@dataclass(frozen=True)
class Config:
    name: str
    hidden: tuple[int, ...]
    batch_size: int
    warmup: int
    steps: int  # timed steps per repeat


@dataclass(frozen=True)
class Sizes:
    reference: Config
    wide: Config
    seed_loader_steps: int
    ceiling_n: int
    repeats: int
    train_samples: int | None  # None: the whole training set
    row_budget_s: float  # timed seconds a row may take, all repeats together
    stage_max_steps: int | None  # the timed train stage's train.max_steps (None: its whole epoch)


FULL = Sizes(
    reference=Config("reference", (256,), 64, warmup=50, steps=600),
    wide=Config("wide", (4096, 4096), 512, warmup=3, steps=10),
    seed_loader_steps=200,
    ceiling_n=2048,
    repeats=5,
    train_samples=None,
    row_budget_s=20,
    stage_max_steps=None,
)
QUICK = Sizes(
    reference=Config("reference", (256,), 64, warmup=5, steps=40),
    wide=Config("wide", (1024, 1024), 256, warmup=2, steps=5),
    seed_loader_steps=20,
    ceiling_n=512,
    repeats=1,
    train_samples=8192,
    row_budget_s=3,
    stage_max_steps=100,
)
GPU_FULL = Sizes(
    reference=Config("reference", (256,), 64, warmup=100, steps=2000),
    wide=Config("wide", (4096, 4096), 4096, warmup=20, steps=200),
    seed_loader_steps=300,
    ceiling_n=8192,
    repeats=5,
    train_samples=None,
    row_budget_s=20,
    stage_max_steps=None,
)


class PeakMemory:
    """Peak memory while a block runs: the CUDA allocator's peak on a GPU; on
    the CPU, the process's resident set size, sampled every millisecond."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._process = psutil.Process()
            self._peak = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._peak / 2**20


def endless_batches(data: Split, batch_size: int, seed: int):
    generator = torch.Generator(device=data.images.device).manual_seed(seed)
    while True:
        for images, labels in shuffled_batches(data, batch_size, generator):
            if len(labels) == batch_size:  # equal work in every timed step
                yield images, labels


class BareUpdate:
    """`p -= lr * grad` as one `torch._foreach_add_`: no optimizer around it.
    Only a yardstick for what torch.optim.SGD's Python costs per step."""

    def __init__(self, params, lr: float):
        self.params, self.lr = list(params), lr

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.params, [param.grad for param in self.params], alpha=-self.lr)


def time_training(
    config: Config,
    precision: str,
    data: Split,
    clock: Clock,
    sizes: Sizes,
    compile: bool = False,
    bare_update: bool = False,
    optimizer: OptimizerChoice = SGD,
) -> dict:
    device = data.images.device
    torch.manual_seed(0)
    policy = PrecisionPolicy(precision, device.type)
    model = policy.convert_module(build_mlp(config.hidden).to(device))
    optimizer_name = optimizer.name
    optimizer = (
        BareUpdate(model.parameters(), lr=0.01) if bare_update else make_optimizer(model, policy, 0.01, optimizer)
    )
    step = TrainStep(model, policy, optimizer, compile=compile)
    batches = endless_batches(data, config.batch_size, seed=0)

    def run(n: int):
        for _ in range(n):
            step(*next(batches))

    with policy.numerics(), PeakMemory(device) as memory:
        # Fit the row into its time budget: the first step says how slow a step
        # is; a slow one gets less warm-up, fewer timed steps and fewer repeats.
        first = clock.time(lambda: run(1))
        if first > sizes.row_budget_s:  # one step over the whole budget: one more step is the figure
            steps, seconds = 1, clock.time(lambda: run(1))
        else:
            clock.time(lambda: run(max(1, min(config.warmup - 1, int(sizes.row_budget_s / 4 / first)))))
            per_step = clock.time(lambda: run(1))
            steps = max(1, min(config.steps, int(sizes.row_budget_s / sizes.repeats / per_step)))
            repeats = max(1, min(sizes.repeats, int(sizes.row_budget_s / (steps * per_step))))
            # The best of the repeats: noise on a shared machine only ever adds time.
            seconds = min(clock.time(lambda: run(steps)) for _ in range(repeats))
    samples_per_s = steps * config.batch_size / seconds
    flops = training_flops_per_sample(config.hidden) * samples_per_s
    name = (
        config.name
        + ("-compiled" if compile else "")
        + ("-bare-update" if bare_update else "")
        + (f"-{optimizer_name}" if optimizer_name != "sgd" else "")
    )
    return {
        "config": name,
        "precision": precision,
        "hidden": list(config.hidden),
        "batch_size": config.batch_size,
        "timed_steps": steps,
        "samples_per_s": samples_per_s,
        "ms_per_step": 1000 * seconds / steps,
        "model_tflops": flops / 1e12,
        "peak_memory_mb": memory.peak_mb,
    }


def time_diagnostics(
    config: Config,
    precision: str,
    data: Split,
    clock: Clock,
    sizes: Sizes,
    every: int,
    optimizer: OptimizerChoice = SGD,
) -> float:
    """The share of an epoch's time that measuring every `every`-th step adds:
    a measured step's extra time over a plain one, divided by `every` plain steps."""
    device = data.images.device
    torch.manual_seed(0)
    policy = PrecisionPolicy(precision, device.type)
    model = policy.convert_module(build_mlp(config.hidden).to(device))
    step = TrainStep(model, policy, make_optimizer(model, policy, 0.01, optimizer))
    recipe = TrainParams(epochs=1, batch_size=config.batch_size, lr=0.01, hidden=config.hidden, compile=False)
    diagnostics = make_diagnostics(recipe, policy, optimizer, every, device)
    batches = endless_batches(data, config.batch_size, seed=0)
    steps = max(5, config.steps // 20)

    def plain(n: int):
        for _ in range(n):
            step(*next(batches))

    def measured(n: int):
        for number in range(n):
            diagnostics.measure(step, model, *next(batches), None, number)

    with policy.numerics():
        plain(config.warmup)
        measured(2)
        plain_s = min(clock.time(lambda: plain(steps)) for _ in range(sizes.repeats)) / steps
        measured_s = min(clock.time(lambda: measured(steps)) for _ in range(sizes.repeats)) / steps
    return (measured_s - plain_s) / (every * plain_s)


def time_seed_loader(data_dir: Path, device: torch.device, steps: int, clock: Clock, repeats: int) -> dict:
    """The tutorial's pipeline: PIL images through ToTensor and Normalize, one
    sample at a time, collated by a DataLoader; the same model and optimizer."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        raw = Path(root, "MNIST", "raw")
        raw.mkdir(parents=True)
        for file in data_dir.iterdir():
            (raw / file.name).symlink_to(file.resolve())
        dataset = datasets.MNIST(
            root,
            train=True,
            download=False,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]),
        )
        loader = DataLoader(dataset, batch_size=64, shuffle=True)
        torch.manual_seed(0)
        model = build_mlp((256,)).to(device)
        policy = PrecisionPolicy(BASELINE, device.type)
        step = TrainStep(model, policy, make_optimizer(model, policy, 0.01))

        def run(n: int):
            done = 0
            while done < n:
                for images, labels in loader:
                    step(images.to(device).flatten(1), labels.to(device))
                    done += 1
                    if done == n:
                        break

        with PeakMemory(device) as memory:
            run(5)
            seconds = min(clock.time(lambda: run(steps)) for _ in range(repeats))
    samples_per_s = steps * 64 / seconds
    return {
        "config": "seed-loader",
        "precision": "fp32",
        "hidden": [256],
        "batch_size": 64,
        "timed_steps": steps,
        "samples_per_s": samples_per_s,
        "ms_per_step": 1000 * seconds / steps,
        "model_tflops": training_flops_per_sample((256,)) * samples_per_s / 1e12,
        "peak_memory_mb": memory.peak_mb,
    }


def matmul_ceiling(dtype: torch.dtype, n: int, device: torch.device, clock: Clock, budget_s: float) -> float:
    """FLOP/s of an n x n x n matrix multiply: what this device achieves in
    `dtype`, timed within `budget_s` (on a CPU without native fp16, one fp16
    product of n = 2048 alone can take 20 s: then that one is the figure)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    first = clock.time(lambda: a @ b)
    if first * 3 > budget_s:
        return 2 * n**3 / first
    reps = max(1, min(int(2e11 / (2 * n**3)) if device.type == "cuda" else 3, int(budget_s / 3 / first)))
    seconds = min(clock.time(lambda: [a @ b for _ in range(reps)]) for _ in range(3))
    return 2 * n**3 * reps / seconds


def time_stage(data_dir: Path, device_param: str, max_steps: int | None) -> list[tuple[float, float]]:
    """Run the real train stage at 1 epoch (cut to `max_steps`, if given) in a
    fresh process, twice: against a fresh MLflow store, then against that same,
    now existing, store. Return (wall time, training-loop time) of each."""
    timings = []
    with tempfile.TemporaryDirectory() as work:
        stage_folder(Path(work), data_dir, {"epochs": 1, "max_steps": max_steps}, precision="fp32", device=device_param)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
                cwd=work,
                env=env,
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - started
            timings.append((wall, json.loads(Path(work, paths.TRAIN_METRICS).read_text())["train_seconds"]))
    return timings


def time_data_parallel(data_dir: Path, steps: int) -> dict[int, float]:
    """Samples/s of the reference fp32 step in one plain process and in 2
    processes under torchrun (each process a fresh interpreter)."""
    script = [
        str(REPO_ROOT / "benchmarks" / "ddp_steps.py"),
        "--data",
        str(data_dir),
        "--device",
        "cpu",
        "--steps",
        str(steps),
    ]
    commands = {
        1: [sys.executable, *script],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *script],
    }
    return {
        n: json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])[
            "samples_per_s"
        ]
        for n, command in commands.items()
    }


def time_imports() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, mlflow"], check=True, capture_output=True)
    return time.perf_counter() - started


def stage_figures(data_dir: Path, device_param: str, max_steps: int | None) -> dict[str, float]:
    """The train stage's wall time beside its training loop, against `import torch, mlflow`."""
    import_s = time_imports()
    (wall, loop), (again_wall, again_loop) = time_stage(data_dir, device_param, max_steps)
    return {
        "stage_overhead_ratio": (wall - loop) / import_s,
        "stage_overhead_ratio_existing_store": (again_wall - again_loop) / import_s,
        "stage_wall_s": wall,
        "stage_training_loop_s": loop,
        "stage_existing_store_wall_s": again_wall,
        "stage_existing_store_training_loop_s": again_loop,
        "import_torch_mlflow_s": import_s,
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return (
        f"{device_name(device)}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads "
        f"(torch {torch.__version__})"
    )


def markdown(rows: list[dict], ceilings: dict[str, float]) -> str:
    lines = [
        "| config | precision | hidden | batch | timed steps | samples/s | ms/step | model TFLOP/s | of ceiling "
        "| peak MB |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        fraction = r["model_tflops"] * 1e12 / ceilings[CEILING_OF[r["precision"]]]
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['hidden']} | {r['batch_size']} | {r['timed_steps']} | "
            f"{r['samples_per_s']:,.0f} | {r['ms_per_step']:.3f} | {r['model_tflops']:.4f} | "
            f"{fraction:.1%} | {r['peak_memory_mb']:,.0f} |"
        )
    lines += ["", "| ceiling | TFLOP/s |", "| --- | ---: |"]
    lines += [f"| {name} matmul | {flops / 1e12:.3f} |" for name, flops in ceilings.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (under 2 minutes)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT / paths.DATA_DIR,
        help="the MNIST files; downloaded there (MNIST_MIRROR applies) if absent",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the reference network with train.compile (CUDA graphs on a GPU)",
    )
    parser.add_argument(
        "--skip-stage", action="store_true", help="do not time the train stage (where MLflow is not installed)"
    )
    parser.add_argument(
        "--row-budget", type=float, help="timed seconds per row, all repeats together (default 20; 3 with --quick)"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help=f"run with glibc keeping freed memory ({' '.join(f'{k}={v}' for k, v in KEEP_FREED_MEMORY.items())})",
    )
    args = parser.parse_args(argv)
    if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        # glibc reads them once, when the process starts: start again with them.
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | KEEP_FREED_MEMORY)

    device = resolve_device(args.device, BASELINE)
    sizes = QUICK if args.quick else GPU_FULL if device.type == "cuda" else FULL
    if args.row_budget is not None:
        sizes = dataclasses.replace(sizes, row_budget_s=args.row_budget)
    clock = Clock(device)
    download_mnist(args.data)
    data = load_split(args.data, "train", device)
    if sizes.train_samples:
        data = Split(data.images[: sizes.train_samples], data.labels[: sizes.train_samples])
    malloc = " ".join(f"{k}={os.environ[k]}" for k in KEEP_FREED_MEMORY if k in os.environ) or "glibc's defaults"
    print(f"# Training speed on {device_description(device)}; malloc: {malloc}", flush=True)

    skipped = {name: why for name in PRECISIONS if (why := refusal(name, device.type))}
    timed = [name for name in PRECISIONS if name not in skipped]
    ceilings = {}
    for name, (dtype, _tf32) in CEILINGS.items():
        if name in timed:
            with PrecisionPolicy(name, device.type).numerics():  # TF32 as that precision sets it
                ceilings[name] = matmul_ceiling(dtype, sizes.ceiling_n, device, clock, sizes.row_budget_s)
    rows = [time_seed_loader(args.data, device, sizes.seed_loader_steps, clock, sizes.repeats)]
    for config in (sizes.reference, sizes.wide):
        for precision in timed:
            rows.append(time_training(config, precision, data, clock, sizes))
            print(f"  {config.name} {precision}: {rows[-1]['samples_per_s']:,.0f} samples/s", file=sys.stderr)
        if config is sizes.reference:
            rows.append(time_training(config, BASELINE, data, clock, sizes, bare_update=True))
    if args.compile:
        for precision in timed:
            rows.append(time_training(sizes.reference, precision, data, clock, sizes, compile=True))
    for precision in timed:  # AdamW beside SGD's rows above
        rows.append(time_training(sizes.reference, precision, data, clock, sizes, optimizer=ADAMW))
        print(f"  reference-adamw {precision}: {rows[-1]['samples_per_s']:,.0f} samples/s", file=sys.stderr)
    every = load(REPO_ROOT / paths.PARAMS).diagnostics_every
    diagnostics_cost = {
        f"{p}{'-adamw' if o is ADAMW else ''}": time_diagnostics(sizes.reference, p, data, clock, sizes, every, o)
        for p, o in DIAGNOSED
        if p in timed
    }
    if device.type == "cpu":
        data_parallel = time_data_parallel(args.data, sizes.reference.steps // 2)
    stage = {} if args.skip_stage else stage_figures(args.data, device.type, sizes.stage_max_steps)

    speed = {(r["config"], r["precision"]): r["samples_per_s"] for r in rows}
    flops = {(r["config"], r["precision"]): r["model_tflops"] * 1e12 for r in rows}
    figures = {
        "device": device_description(device),
        "quick": args.quick,
        "malloc": malloc,
        **{f"reference_{p}_vs_seed_loader": speed["reference", p] / speed["seed-loader", BASELINE] for p in timed},
        **{f"reference_{p}_ceiling_fraction": flops["reference", p] / ceilings[CEILING_OF[p]] for p in timed},
        **{f"wide_{p}_ceiling_fraction": flops["wide", p] / ceilings[CEILING_OF[p]] for p in timed},
        **{
            f"{c}_{p}_vs_{BASELINE}": speed[c, p] / speed[c, BASELINE]
            for c in ("reference", "wide")
            for p in timed
            if p != BASELINE
        },
        **{f"reference_{p}_adamw_vs_sgd": speed["reference-adamw", p] / speed["reference", p] for p in timed},
        "reference_fp32_torch_optim_vs_bare_update": speed["reference", BASELINE]
        / speed["reference-bare-update", BASELINE],
        **{f"ceiling_{p}_tflops": flops_ / 1e12 for p, flops_ in ceilings.items()},
        **{f"diagnostics_every_{every}_{p}_epoch_overhead": cost for p, cost in diagnostics_cost.items()},
        "skipped_precisions": ", ".join(skipped) or "none",
    }
    figures |= stage
    if device.type == "cpu":
        figures |= {
            "data_parallel_1_process_samples_per_s": data_parallel[1],
            "data_parallel_2_processes_samples_per_s": data_parallel[2],
            "data_parallel_2_vs_1_processes": data_parallel[2] / data_parallel[1],
        }
    if args.compile:
        figures |= {
            f"reference_{p}_compiled_vs_eager": speed["reference-compiled", p] / speed["reference", p] for p in timed
        }
    bad = [key for key, value in figures.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise SystemExit(f"non-finite figures: {bad}")

    print()
    print(markdown(rows, ceilings))
    print()
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(
        "diagnostics every "
        + f"{every} steps: "
        + ", ".join(f"{p} +{cost:.1%} of an epoch" for p, cost in diagnostics_cost.items())
    )
    if device.type == "cpu":
        print(
            f"data-parallel, reference fp32 step: {data_parallel[1]:,.0f} samples/s in 1 process "
            f"({torch.get_num_threads()} threads), {data_parallel[2]:,.0f} in 2 processes under torchrun "
            f"(1 thread each, DDP over gloo): {data_parallel[2] / data_parallel[1]:.2f}x"
        )
    if stage:
        print(
            f"train stage, 1 epoch: {stage['stage_wall_s']:.2f} s wall with a fresh MLflow store, "
            f"{stage['stage_existing_store_wall_s']:.2f} s with an existing one, of which "
            f"{stage['stage_training_loop_s']:.2f} s and {stage['stage_existing_store_training_loop_s']:.2f} s in "
            f"the training loop; `import torch, mlflow`: {stage['import_torch_mlflow_s']:.2f} s; overhead ratios "
            f"{stage['stage_overhead_ratio']:.2f} (fresh store) and {stage['stage_overhead_ratio_existing_store']:.2f} "
            "(existing store)"
        )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
