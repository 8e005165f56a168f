"""MLflow, as the stages use it, one job per module.

- `store`: where the runs go (the repository's SQLite store, or
  MLFLOW_TRACKING_URI) and the experiment they go to;
- `health`: whether a tracking server answers and takes our credentials;
- `lifecycle`: one run per stage, always ended, with its tags;
- `buffer`: per-epoch metrics that never hold up training and are never lost;
- `liveness`: whether the process of a RUNNING run is alive;
- `run_types`: which runs are training runs, and which the commands added;
- `view`: the project's saved view of MLflow's runs table.
"""

import warnings

# MLflow's own SQLAlchemy mappings trigger this deprecation warning; it is not
# ours to fix. The filter is process-wide on purpose: the warning also fires in
# MLflow's own threads (system metrics, asynchronous logging), which a
# `warnings.catch_warnings()` block around our calls would not cover (and that
# block is not thread-safe). It matches this one message and nothing else, and
# it is set here, before any module of the package imports MLflow.
warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated", category=DeprecationWarning)
