"""The report's answers to the tutorial's claims follow the numbers, whichever way they fall."""

from __future__ import annotations

from mnist_precision.analysis.report import claims
from mnist_precision.analysis.report.comparison import Group, RunRecord, config_of, device_label, group_runs, verdicts

CPU = "cpu (AMD EPYC; AVX512, features avx512f,avx512_bf16)"
GPU = "cuda (NVIDIA H200; compute capability 9.0)"


def group(device: str, runs: dict[str, list[tuple[float, float, float | None]]], bytes_fp16: int = 409) -> Group:
    """`runs`: per variant, one (test accuracy, samples/s, lost updates) per seed."""
    built = Group(device, (("train.hidden", "[256]"),))
    for variant, seeds in runs.items():
        for seed, (accuracy, speed, lost) in enumerate(seeds):
            built.runs[variant][seed] = RunRecord(
                run_id=f"{variant}{seed}",
                precision=variant,
                seed=seed,
                device=device,
                config=built.config,
                test_accuracy=accuracy,
                samples_per_s=speed,
                peak_memory_mb=None,
                peak_memory_kind=None,
                model_bytes_fp32=816,
                model_bytes_fp16=bytes_fp16,
                fp16_stored_test_accuracy=accuracy - 0.0001,
                lost_updates=lost,
            )
    return built


def test_each_claim_is_answered_from_the_numbers_of_the_device():
    cpu = group(
        CPU,
        {
            "fp32": [(0.91, 100.0, 0.0001), (0.92, 110.0, 0.0001), (0.915, 105.0, 0.0001)],
            "fp16": [(0.91, 11.0, 0.0001), (0.92, 12.0, 0.0001), (0.915, 11.5, 0.0001)],
            "bf16-true": [(0.85, 150.0, 0.83), (0.86, 160.0, 0.84), (0.855, 155.0, 0.82)],
        },
    )
    text = claims.section([cpu], verdicts)
    assert f"- Yes, on {CPU}: the weights stored in fp16 take 0.50x the bytes of fp32" in text
    assert "differs by -0.0001 on average" in text
    assert "- On a GPU: not measured, no GPU runs or crossover map in this store" in text
    assert "fp16 0.11x (slower)" in text and "bf16-true 1.48x (faster)" in text
    assert "1 of 2 variants with enough seeds kept fp32's test accuracy" in text
    assert "bf16-true -0.0600 [" in text and "], lower" in text
    assert f"- No, on {CPU} with sgd: bf16-true lost 83.0% of its non-zero updates to rounding" in text
    assert "(fp32: 0.0100%)" in text


def test_the_answers_turn_with_the_numbers():
    gpu = group(GPU, {"fp32": [(0.91, 100.0, None)], "fp16-true": [(0.91, 300.0, None)]}, bytes_fp16=700)
    text = claims.section([gpu], verdicts)
    assert f"- No, on {GPU}: the weights stored in fp16 take 0.86x" in text
    assert "On a GPU: not measured" not in text
    assert "fp16-true 3.00x (faster)" in text  # one seed: called by the margin, not by an interval
    assert "0 of 0 variants with enough seeds" in text and "+0.0000, too few seeds to tell" in text
    assert f"- Undecided (too few seeds), on {GPU} with sgd: fp16-true recorded no lost-update share" in text
    same = group(GPU, {"fp32": [(0.91, 100.0, None)], "fp16": [(0.91, 102.0, None)]})
    assert "fp16 1.02x (about the same)" in claims.section([same], verdicts)
    assert "Not measured: no fp16-true, bf16-true or -sr runs" in claims.section([same], verdicts)


def test_runs_of_another_torch_or_cuda_are_another_group_named_by_it():
    cpu = {
        "device_resolved": "cpu",
        "device_name": "AMD EPYC",
        "cpu_capability": "AVX2",
        "cpu_features": "none",
        "threads": "2",
        "torch_version": "2.14.1",
        "cuda_version": "13.0",
    }
    gpu = {
        "device_resolved": "cuda",
        "device_name": "NVIDIA H200",
        "cuda_compute_capability": "9.0",
        "torch_version": "2.14.1",
        "cuda_version": "13.0",
    }
    assert device_label(cpu) == "cpu (AMD EPYC; AVX2, features none, 2 threads; torch 2.14.1)"
    assert device_label(gpu) == "cuda (NVIDIA H200; compute capability 9.0; torch 2.14.1, CUDA 13.0)"
    assert device_label(cpu | {"cuda_version": "12.8"}) == device_label(cpu)  # the CPU runs no CUDA kernel
    labels = {
        device_label(cpu),
        device_label(cpu | {"torch_version": "2.13.0"}),
        device_label(gpu),
        device_label(gpu | {"cuda_version": "12.8"}),
    }
    records = [
        RunRecord(
            run_id=label,
            precision="fp32",
            seed=0,
            device=label,
            config=(),
            test_accuracy=0.9,
            samples_per_s=1.0,
            peak_memory_mb=None,
            peak_memory_kind=None,
            model_bytes_fp32=None,
            model_bytes_fp16=None,
        )
        for label in labels
    ]
    assert sorted(group.device for group in group_runs(records)) == sorted(labels)


def test_pure_half_is_answered_per_optimizer_and_for_stochastic_rounding():
    sgd = group(
        CPU,
        {
            "fp32": [(0.91, 100.0, 0.0001)] * 3,
            "bf16-true": [(0.90, 90.0, 0.83), (0.905, 90.0, 0.84), (0.902, 90.0, 0.82)],
            "bf16-true-sr": [(0.91, 60.0, 0.80), (0.912, 60.0, 0.79), (0.909, 60.0, 0.81)],
        },
    )
    for name, bias in (("fp32", 0.0), ("bf16-true", -0.49), ("bf16-true-sr", 0.001)):
        for run in sgd.runs[name].values():
            run.update_bias = bias
    adamw = group(CPU, {"fp32": [(0.96, 80.0, 0.0)] * 2, "fp16-true": [(0.95, 10.0, 0.1), (0.955, 10.0, 0.1)]})
    adamw.config = (("optimizer", "adamw"),)
    for run in adamw.runs["fp16-true"].values():
        run.second_moment_flushed = 0.27
    text = claims.section([sgd, adamw], verdicts)
    assert f"on {CPU} with sgd: bf16-true lost 83.0% of its non-zero updates to rounding, update bias -0.490" in text
    assert "bf16-true-sr lost 80.0% of its non-zero updates to rounding, update bias +0.001" in text
    assert (
        "  - Stochastic rounding: bf16-true-sr's update bias +0.001 against bf16-true's -0.490 (applied on "
        "average: |bias| < 0.05 counts as unbiased); its test accuracy closer to fp32's by +0.0080."
    ) in text
    assert (
        f"on {CPU} with adamw: fp16-true lost 10.0% of its non-zero updates to rounding, 27.0% of AdamW's "
        "second moment flushed to zero" in text
    )


def test_runs_of_another_optimizer_are_another_group():
    base = {
        "train.hidden": "[256]",
        "train.batch_size": "64",
        "train.epochs": "1",
        "train.lr": "0.01",
        "train.compile": "False",
        "train.weight_decay": "0.01",
        "train.betas": "[0.9, 0.999]",
        "train.eps": "1e-08",
    }
    before_the_param = config_of(base)  # logged before `optimizer` existed: SGD
    assert before_the_param == config_of(base | {"optimizer": "sgd"})
    assert dict(config_of(base | {"optimizer": "adamw"}))["train.eps"] == "1e-08"
    assert "train.eps" not in dict(before_the_param)  # SGD's groups are not split by AdamW's hyperparameters
    records = [
        RunRecord(
            run_id=o,
            precision="fp32",
            seed=0,
            device=CPU,
            config=config_of(base | {"optimizer": o}),
            test_accuracy=0.9,
            samples_per_s=1.0,
            peak_memory_mb=None,
            peak_memory_kind=None,
            model_bytes_fp32=None,
            model_bytes_fp16=None,
        )
        for o in ("sgd", "adamw")
    ]
    assert sorted(g.optimizer for g in group_runs(records)) == ["adamw", "sgd"]
    assert [g.title().endswith("optimizer adamw") for g in group_runs(records)].count(True) == 1
