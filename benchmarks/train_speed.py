"""Training speed of each precision, measured side by side in one process.

    python benchmarks/train_speed.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/train_speed.py --quick    # tiny sizes, under 2 minutes
    python benchmarks/train_speed.py --device cuda --compile   # on a GPU (see gpu_check.sh)

For fp32, fp16 and bf16 it times the project's own training step (`TrainStep`
over `shuffled_batches`, as the train stage runs it) after warm-up, on:

- reference:   the params.yaml recipe, one hidden layer of 256, batch 64;
- wide:        two hidden layers of 4096, batch 512, where arithmetic dominates;
- seed-loader: the seed tutorial's input pipeline (torchvision MNIST with
               ToTensor + Normalize through a DataLoader), same model, fp32;
- ceiling:     a large matrix multiply in each dtype: what the machine achieves.

It prints a Markdown table and, as its last line, one JSON object with the
ratios documented in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
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
import yaml

from mnist_precision import paths
from mnist_precision.allocator import keep_freed_memory
from mnist_precision.data import MEAN, STD, Split, load_split, shuffled_batches
from mnist_precision.device import device_name, resolve_device
from mnist_precision.download import download_mnist
from mnist_precision.model import build_mlp
from mnist_precision.precision import PrecisionPolicy, use_true_fp32
from mnist_precision.training import TrainStep

REPO_ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


FULL = Sizes(
    reference=Config("reference", (256,), 64, warmup=50, steps=600),
    wide=Config("wide", (4096, 4096), 512, warmup=3, steps=10),
    seed_loader_steps=200, ceiling_n=2048, repeats=5, train_samples=None,
)
QUICK = Sizes(
    reference=Config("reference", (256,), 64, warmup=5, steps=40),
    wide=Config("wide", (1024, 1024), 256, warmup=2, steps=5),
    seed_loader_steps=20, ceiling_n=512, repeats=1, train_samples=8192,
)
GPU_FULL = Sizes(
    reference=Config("reference", (256,), 64, warmup=100, steps=2000),
    wide=Config("wide", (4096, 4096), 4096, warmup=20, steps=200),
    seed_loader_steps=300, ceiling_n=8192, repeats=5, train_samples=None,
)


def training_flops_per_sample(hidden: tuple[int, ...]) -> int:
    """Matmul FLOPs of one training sample: forward (2 per weight), weight
    gradients (2 per weight), and input gradients for every layer but the
    first, whose input (the image) needs none."""
    widths = [28 * 28, *hidden, 10]
    weights = [a * b for a, b in zip(widths, widths[1:])]
    return 2 * sum(weights) + 2 * sum(weights) + 2 * sum(weights[1:])


class Clock:
    """Wall time on the CPU; CUDA events on a GPU, so that queued kernels count."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, work) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            work()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        started = time.perf_counter()
        work()
        return time.perf_counter() - started


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


def time_training(config: Config, precision: str, data: Split, clock: Clock, repeats: int,
                  compile: bool = False) -> dict:
    device = data.images.device
    torch.manual_seed(0)
    model = build_mlp(config.hidden).to(device)
    step = TrainStep(model, PrecisionPolicy(precision, device.type), lr=0.01, compile=compile)
    batches = endless_batches(data, config.batch_size, seed=0)

    def run(n: int):
        for _ in range(n):
            step(*next(batches))

    with PeakMemory(device) as memory:
        clock.time(lambda: run(config.warmup))
        # The best of the repeats: noise on a shared machine only ever adds time.
        seconds = min(clock.time(lambda: run(config.steps)) for _ in range(repeats))
    samples_per_s = config.steps * config.batch_size / seconds
    flops = training_flops_per_sample(config.hidden) * samples_per_s
    return {"config": config.name + ("-compiled" if compile else ""), "precision": precision,
            "hidden": list(config.hidden), "batch_size": config.batch_size,
            "samples_per_s": samples_per_s, "ms_per_step": 1000 * seconds / config.steps,
            "model_tflops": flops / 1e12, "peak_memory_mb": memory.peak_mb}


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
        dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]))
        loader = DataLoader(dataset, batch_size=64, shuffle=True)
        torch.manual_seed(0)
        model = build_mlp((256,)).to(device)
        step = TrainStep(model, PrecisionPolicy("fp32", device.type), lr=0.01)

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
    return {"config": "seed-loader", "precision": "fp32", "hidden": [256], "batch_size": 64,
            "samples_per_s": samples_per_s, "ms_per_step": 1000 * seconds / steps,
            "model_tflops": training_flops_per_sample((256,)) * samples_per_s / 1e12,
            "peak_memory_mb": memory.peak_mb}


def matmul_ceiling(dtype: torch.dtype, n: int, device: torch.device, clock: Clock) -> float:
    """FLOP/s of an n x n x n matrix multiply: what this device achieves in `dtype`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = max(3, int(2e11 / (2 * n**3)) if device.type == "cuda" else 3)
    a @ b
    seconds = min(clock.time(lambda: [a @ b for _ in range(reps)]) for _ in range(3))
    return 2 * n**3 * reps / seconds


def time_stage(data_dir: Path, device_param: str) -> list[tuple[float, float]]:
    """Run the real train stage at 1 epoch in a fresh process, twice: against
    a fresh MLflow store, then against that same, now existing, store. Return
    (wall time, training-loop time) of each."""
    timings = []
    with tempfile.TemporaryDirectory() as work:
        params = yaml.safe_load((REPO_ROOT / paths.PARAMS).read_text())
        params |= {"precision": "fp32", "device": device_param}
        params["train"] |= {"epochs": 1}
        Path(work, paths.PARAMS).write_text(yaml.safe_dump(params))
        Path(work, paths.DATA_DIR).parent.mkdir(parents=True)
        Path(work, paths.DATA_DIR).symlink_to(data_dir.resolve())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=work, env=env,
                           check=True, capture_output=True)
            wall = time.perf_counter() - started
            timings.append((wall, json.loads(Path(work, paths.TRAIN_METRICS).read_text())["train_seconds"]))
    return timings


def time_imports() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, mlflow"], check=True, capture_output=True)
    return time.perf_counter() - started


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"{device_name(device)}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def markdown(rows: list[dict], ceilings: dict[str, float]) -> str:
    lines = ["| config | precision | hidden | batch | samples/s | ms/step | model TFLOP/s | of ceiling | peak MB |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        fraction = r["model_tflops"] * 1e12 / ceilings[r["precision"]]
        lines.append(f"| {r['config']} | {r['precision']} | {r['hidden']} | {r['batch_size']} | "
                     f"{r['samples_per_s']:,.0f} | {r['ms_per_step']:.3f} | {r['model_tflops']:.4f} | "
                     f"{fraction:.1%} | {r['peak_memory_mb']:,.0f} |")
    lines += ["", "| ceiling | TFLOP/s |", "| --- | ---: |"]
    lines += [f"| {name} matmul | {flops / 1e12:.3f} |" for name, flops in ceilings.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (under 2 minutes)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", type=Path, default=REPO_ROOT / paths.DATA_DIR,
                        help="the MNIST files; downloaded there (MNIST_MIRROR applies) if absent")
    parser.add_argument("--compile", action="store_true",
                        help="also time the reference network with train.compile (CUDA graphs on a GPU)")
    parser.add_argument("--skip-stage", action="store_true",
                        help="do not time the train stage (where MLflow is not installed)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device, "fp32")
    keep_freed_memory()  # as the train stage does
    use_true_fp32()
    sizes = QUICK if args.quick else GPU_FULL if device.type == "cuda" else FULL
    clock = Clock(device)
    download_mnist(args.data)
    data = load_split(args.data, "train", device)
    if sizes.train_samples:
        data = Split(data.images[:sizes.train_samples], data.labels[:sizes.train_samples])
    print(f"# Training speed on {device_description(device)}", flush=True)

    ceilings = {name: matmul_ceiling(DTYPES[name], sizes.ceiling_n, device, clock) for name in PRECISIONS}
    rows = [time_seed_loader(args.data, device, sizes.seed_loader_steps, clock, sizes.repeats)]
    for config in (sizes.reference, sizes.wide):
        for precision in PRECISIONS:
            rows.append(time_training(config, precision, data, clock, sizes.repeats))
            print(f"  {config.name} {precision}: {rows[-1]['samples_per_s']:,.0f} samples/s", file=sys.stderr)
    if args.compile:
        for precision in PRECISIONS:
            rows.append(time_training(sizes.reference, precision, data, clock, sizes.repeats, compile=True))
    if not args.skip_stage:
        import_s = time_imports()
        (stage_wall, stage_loop), (again_wall, again_loop) = time_stage(args.data, device.type)

    speed = {(r["config"], r["precision"]): r["samples_per_s"] for r in rows}
    flops = {(r["config"], r["precision"]): r["model_tflops"] * 1e12 for r in rows}
    figures = {
        "device": device_description(device),
        "quick": args.quick,
        "reference_fp32_vs_seed_loader": speed["reference", "fp32"] / speed["seed-loader", "fp32"],
        **{f"reference_{p}_vs_seed_loader": speed["reference", p] / speed["seed-loader", "fp32"] for p in PRECISIONS[1:]},
        **{f"reference_{p}_ceiling_fraction": flops["reference", p] / ceilings[p] for p in PRECISIONS},
        **{f"wide_{p}_ceiling_fraction": flops["wide", p] / ceilings[p] for p in PRECISIONS},
        "reference_fp16_vs_fp32": speed["reference", "fp16"] / speed["reference", "fp32"],
        "reference_bf16_vs_fp32": speed["reference", "bf16"] / speed["reference", "fp32"],
        "wide_fp16_vs_fp32": speed["wide", "fp16"] / speed["wide", "fp32"],
        "wide_bf16_vs_fp32": speed["wide", "bf16"] / speed["wide", "fp32"],
        **{f"ceiling_{p}_tflops": ceilings[p] / 1e12 for p in PRECISIONS},
    }
    if not args.skip_stage:
        figures |= {
            "stage_overhead_ratio": (stage_wall - stage_loop) / import_s,
            "stage_overhead_ratio_existing_store": (again_wall - again_loop) / import_s,
            "stage_wall_s": stage_wall,
            "stage_training_loop_s": stage_loop,
            "import_torch_mlflow_s": import_s,
        }
    if args.compile:
        figures |= {f"reference_{p}_compiled_vs_eager": speed["reference-compiled", p] / speed["reference", p]
                    for p in PRECISIONS}
    bad = [key for key, value in figures.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise SystemExit(f"non-finite figures: {bad}")

    print()
    print(markdown(rows, ceilings))
    print()
    if not args.skip_stage:
        print(f"train stage, 1 epoch: {stage_wall:.2f} s wall with a fresh MLflow store, {again_wall:.2f} s with an "
              f"existing one, of which {stage_loop:.2f} s and {again_loop:.2f} s in the training loop; "
              f"`import torch, mlflow`: {import_s:.2f} s; overhead ratios {figures['stage_overhead_ratio']:.2f} "
              f"(fresh store) and {figures['stage_overhead_ratio_existing_store']:.2f} (existing store)")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
