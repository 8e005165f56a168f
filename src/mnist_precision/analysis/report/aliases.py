"""The verdict where MLflow users pick a model to deploy: aliases in the Model
Registry (one registered model per experiment, a version per training run).

- `<variant>-<device>` (`-<optimizer>` beside it where it is not SGD), e.g.
  `fp16-cpu`: the version of the variant's most accurate seed run;
- `recommended-<device>`: the version of the fastest variant whose accuracy
  is within noise of fp32's (fp32 itself, at 1x, where none is), with the
  report's sentence as the version's description.

Groups that differ only in their recipe share these names: the first group
the report lists sets them.
"""

from __future__ import annotations

import re
import sys

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_precision.analysis.report.comparison import Group, RunRecord, verdicts
from mnist_precision.analysis.report.markdown import baseline_sentence, verdict_sentence
from mnist_precision.base import names
from mnist_precision.base.precision_table import BASELINE
from mnist_precision.tracking.lifecycle import forbidden


def alias(variant: str, group: Group) -> str:
    device = group.device.split(" ")[0].split(":")[0]  # "cpu", "cuda"
    optimizer = "" if group.optimizer == "sgd" else f"-{group.optimizer}"
    return re.sub(r"[^0-9A-Za-z_-]+", "-", f"{variant}{optimizer}-{device}").strip("-")


def recommended(group: Group) -> tuple[str, str]:
    """The variant to deploy on the group's device, and why."""
    if BASELINE not in group.runs:
        return group.precisions()[0], f"no {BASELINE} runs to compare against; on {group.device}."
    choice, speed, why = BASELINE, 1.0, baseline_sentence(group)
    for verdict in verdicts(group):
        if verdict.accuracy.contains(0.0) and verdict.throughput.estimate > speed:
            choice, speed, why = verdict.precision, verdict.throughput.estimate, verdict_sentence(group, verdict)
    return choice, f"Recommended: the fastest variant whose accuracy is within noise of {BASELINE}'s. {why}"


def most_accurate(runs: list[RunRecord], versions: dict[str, str]) -> str | None:
    registered = [run for run in runs if run.run_id in versions]
    return versions[max(registered, key=lambda run: run.test_accuracy).run_id] if registered else None


def set_aliases(client: MlflowClient, name: str, groups: list[Group]) -> list[str]:
    """Set the aliases of the registered model `name`; returns them. Where
    the server refuses (aliases need EDIT on it), a warning says so."""
    found = client.search_model_versions(f"name = '{name}'")
    versions = {v.run_id: str(v.version) for v in found if v.run_id}
    done: dict[str, str] = {}

    def point(key: str, version: str | None) -> bool:
        """Set alias `key` on `version`, unless there is none or an earlier group set it."""
        if not version or key in done:
            return False
        done[key] = version
        client.set_registered_model_alias(name, key, version)
        return True

    try:
        for group in groups:
            by_variant = {v: most_accurate(list(group.runs[v].values()), versions) for v in group.precisions()}
            for variant, version in by_variant.items():
                point(alias(variant, group), version)
            choice, why = recommended(group)
            if point(alias(names.RECOMMENDED_ALIAS, group), by_variant.get(choice)):
                client.update_model_version(name, str(by_variant[choice]), description=why)
    except MlflowException as error:
        if not forbidden(error):
            raise
        print(
            f"warning: the tracking server refused to set the aliases of registered model {name!r} "
            f"({error.message.splitlines()[0][:200]}): setting them needs EDIT on it (docs/teams.md)",
            file=sys.stderr,
        )
    return sorted(done)
