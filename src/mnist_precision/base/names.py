"""Every name the project logs, defined once: metrics, params, tags and the
fields of the DVC plot files. The stages log under these names, and the
report, DVC's plots (dvc.yaml, checked by tests/test_metrics.py) and the
benchmarks read them back by the same ones."""

from __future__ import annotations

# The train stage, per epoch (MLflow step: the epoch).
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
EPOCH_SECONDS = "epoch_seconds"
EPOCH_SKIPPED_STEPS = "epoch_skipped_steps"
LOSS_SCALE = "loss_scale"  # per sampled step (MLflow step: the training step)

# The train stage, once per run.
SAMPLES_PER_S = "samples_per_s"
TRAIN_SECONDS = "train_seconds"
GRAD_SCALE_FINAL = "grad_scale_final"
SKIPPED_STEPS = "skipped_steps"
PEAK_GPU_MEMORY_MB = "peak_gpu_memory_mb"  # the CUDA allocator's peak
PEAK_RSS_MB = "peak_rss_mb"  # the process's peak resident memory, on the CPU
PEAK_MEMORY = (PEAK_GPU_MEMORY_MB, PEAK_RSS_MB)

# The numerics (diagnostics.py), per epoch, pooled over its sampled steps.
SAMPLED_STEPS = "sampled_steps"
LOST_UPDATES = "lost_updates"
UNDERFLOW_VALUES = ("weights", "weight_grads", "act_grads")
UNDERFLOW_BELOW = ("flushed", "subnormal")  # below fp16's smallest subnormal, or its smallest normal
# Where no loss scale stands between the gradients and the update: the update
# the weights received against the one fp32 arithmetic makes from the same
# weights, optimizer state and gradients.
UPDATE_BIAS = "update_bias"  # sum(sign(intended) * (applied - intended)) / sum(|intended|): -1 all lost, 0 unbiased
WEIGHT_DRIFT = "weight_drift"  # |stored - fp32 shadow| / |intended update| after the step (L2 norms)
# AdamW: the second moment fp32 computes, as the run's stored dtype holds it.
SECOND_MOMENT_FLUSHED = "second_moment_flushed"  # share of its non-zero values that become 0
SECOND_MOMENT_SUBNORMAL = "second_moment_subnormal"  # share below the stored dtype's smallest normal
ADAMW_EPS_SURVIVES = "adamw_eps_survives"  # 1: eps is non-zero in the dtype AdamW adds it in; 0: it became 0


# Every figure an epoch's numerics may hold besides the ranges (which are per
# layer): each row of plots/diagnostics.json has them all, null where the run
# does not measure one, so a chart of the field never lacks it.
EPOCH_NUMERICS = (
    SAMPLED_STEPS,
    LOST_UPDATES,
    UPDATE_BIAS,
    WEIGHT_DRIFT,
    SECOND_MOMENT_FLUSHED,
    SECOND_MOMENT_SUBNORMAL,
    ADAMW_EPS_SURVIVES,
)


def underflow(values: str, below: str, scaled: bool = False) -> str:
    """The share of `values` (UNDERFLOW_VALUES) below fp16's range (UNDERFLOW_BELOW),
    with the run's loss scale applied or not."""
    return f"underflow_{values}{'_scaled' if scaled else ''}_{below}"


def range_act_max(layer: str) -> str:
    return f"range_act_max_layer{layer}"


def range_grad_max(layer: str) -> str:
    return f"range_grad_max_layer{layer}"


RANGE_PREFIX = "range_"

# The evaluate stage.
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
MODEL_BYTES_FP32 = "model_bytes_fp32"
MODEL_BYTES_FP16 = "model_bytes_fp16"
FP16_STORED_TEST_ACCURACY = "fp16_stored_test_accuracy"


def test_accuracy_of_class(label: int | str) -> str:
    return f"test_accuracy_class_{label}"


# The fields of the DVC plot files (plots/*.json) beside the metrics above.
PLOT_EPOCH, PLOT_STEP = "epoch", "step"
# plots/train_epochs.json: EpochRecord's fields
PLOT_LOSS, PLOT_ACCURACY, PLOT_SECONDS, PLOT_SKIPPED_STEPS = "loss", "accuracy", "seconds", "skipped_steps"
PLOT_LOG2_MAGNITUDE, PLOT_SHARE = "log2_magnitude", "share"  # plots/underflow_histogram.json
PLOT_PREDICTED, PLOT_ACTUAL = "predicted", "actual"  # plots/confusion.json

# A variant's parent run (`mnist-precision report`): its verdict against fp32 across seeds.
VERDICT_SEEDS = "verdict_seeds"
VERDICT_TEST_ACCURACY = "verdict_test_accuracy_mean"
VERDICT_ACCURACY_DIFFERENCE = "verdict_accuracy_vs_fp32"  # the variant's mean minus fp32's
VERDICT_THROUGHPUT_RATIO = "verdict_throughput_vs_fp32"  # the geometric-mean ratio
VERDICT_WITHIN_NOISE = "verdict_within_noise"  # 1: the difference's interval holds 0; 0: it does not


def bound(metric: str, side: str) -> str:
    """A bound ("low" or "high") of a verdict's 95% interval."""
    return f"{metric}_{side}"


# The params each training run logs beside params.yaml's own keys: where it ran
# and what its precision does there (the report reads them back by these names).
WORLD_SIZE = "world_size"
NODES = "nodes"
DISTRIBUTED_BACKEND = "distributed_backend"
DEVICE_RESOLVED = "device_resolved"
DEVICE_NAME = "device_name"
TORCH_VERSION = "torch_version"
CUDA_VERSION = "cuda_version"
FLOAT32_MATMUL_PRECISION = "float32_matmul_precision"
CUDA_COMPUTE_CAPABILITY = "cuda_compute_capability"
CUDA_NATIVE_BF16 = "cuda_native_bf16"
CPU_CAPABILITY = "cpu_capability"
CPU_FEATURES = "cpu_features"
COMPUTE_DTYPE = "compute_dtype"
COMPUTE_DTYPE_MAX = "compute_dtype_max"
FP8_LAYERS_KEPT_BF16 = "fp8_layers_kept_bf16"
THREADS = "threads"
THREADS_FROM = "threads_from"
RUN_PARAMS = (
    WORLD_SIZE,
    NODES,
    DISTRIBUTED_BACKEND,
    DEVICE_RESOLVED,
    DEVICE_NAME,
    TORCH_VERSION,
    CUDA_VERSION,
    FLOAT32_MATMUL_PRECISION,
    CUDA_COMPUTE_CAPABILITY,
    CUDA_NATIVE_BF16,
    CPU_CAPABILITY,
    CPU_FEATURES,
    COMPUTE_DTYPE,
    COMPUTE_DTYPE_MAX,
    FP8_LAYERS_KEPT_BF16,
    THREADS,
    THREADS_FROM,
)

# The tags of a run beside MLflow's own. Where its process runs: a run left
# RUNNING by a process of this host that no longer exists is stale.
HOST, PID, PROCESS_START = "host", "pid", "process_start"
GIT_COMMIT = "git_commit"
KILLED_REASON = "killed_reason"  # why a stale run was ended
FAILURE = "failure"  # a training run that diverged: the message
DIVERGED_AT_EPOCH, DIVERGED_AT_STEP = "diverged_at_epoch", "diverged_at_step"
STOPPED_AT_STEP = "stopped_at_step"  # stopped by SIGINT or SIGTERM, checkpointed there
RESUMED_AT_STEP = "resumed_at_step"  # continued from that checkpoint
DVC_DATA_HASH = "dvc.data_md5"  # the hash dvc.lock records for data/mnist
# The runs the commands add beside the training runs carry their type
# (tracking/run_types.py); a variant's parent run its key (analysis/report/parents.py).
RUN_TYPE = "mnist_precision.run_type"
# A model version in the registry carries its run's precision, loss_scale,
# optimizer and seed (params.yaml's keys), its device and TEST_ACCURACY.
VERSION_DEVICE = "device"
# The registry's aliases the report sets: `<variant>-<device>` on each
# variant's most accurate seed, and this prefix on the recommended one.
RECOMMENDED_ALIAS = "recommended"
VARIANT_KEY = "mnist_precision.variant_key"
