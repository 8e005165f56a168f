"""The project's saved view of MLflow's runs table: each run's precision, and each variant's verdict.

MLflow's UI (3.17) opens an experiment on its GenAI overview, and its runs
table shows no param or metric column until the user picks them. The UI keeps
"saved views" as experiment tags, `mlflow.sharedViewState.<key>`, and opens
one at `#/experiments/<id>/runs?viewStateShareKey=<key>`; this writes one in
that format (its state is zlib-deflated JSON in base64, behind "deflate;"),
so that the address `mnist-precision ui` prints lands on the runs table with
the columns that answer the question, and the UI lists it under Views.
"""

from __future__ import annotations

import base64
import json
import time
import zlib

from mlflow import MlflowClient

from mnist_precision.base import names

VIEW_KEY = "mnist-precision-verdict"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "Precision verdict"
# The columns, in this order: what the run is, its verdict (a parent's), then a seed run's own figures.
COLUMNS = (
    "params.`precision`",
    "params.`optimizer`",
    *(
        f"metrics.`{name}`"
        for name in (
            names.VERDICT_ACCURACY_DIFFERENCE,
            names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "low"),
            names.bound(names.VERDICT_ACCURACY_DIFFERENCE, "high"),
            names.VERDICT_WITHIN_NOISE,
            names.VERDICT_THROUGHPUT_RATIO,
            names.VERDICT_SEEDS,
            names.VERDICT_TEST_ACCURACY,
            names.TEST_ACCURACY,
            names.SAMPLES_PER_S,
        )
    ),
)


def view_state() -> dict:
    """The runs table's state as the UI saves it: search, sort and columns.
    Sorted by start time, as the UI sorts by default: sorted by a param, it
    shows nested runs flat, not under their parents (checked in 3.17.2)."""
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": list(COLUMNS),
        "columnOrder": list(COLUMNS),
        "columnWidths": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def save_view(client: MlflowClient, experiment_id: str) -> None:
    """Write (or rewrite) the project's view in the experiment."""
    now = int(time.time() * 1000)
    earlier = client.get_experiment(experiment_id).tags.get(VIEW_TAG)
    created = json.loads(earlier).get("createdAt", now) if earlier else now
    state = "deflate;" + base64.b64encode(zlib.compress(json.dumps(view_state()).encode())).decode()
    client.set_experiment_tag(
        experiment_id, VIEW_TAG, json.dumps({"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": state})
    )


def runs_table_address(ui: str, experiment_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
