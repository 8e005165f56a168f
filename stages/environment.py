"""DVC stage `environment`: write where the pipeline runs to environment.json.

DVC runs it on every `dvc repro` (`always_changed`); the file is rewritten
only when the description changed, so `train` and `evaluate`, which depend on
it, rerun on another machine or software and are skipped everywhere else.
"""

from mnist_precision.base import paths
from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.entry import run_stage
from mnist_precision.base.environment import describe
from mnist_precision.base.params import load


def main() -> None:
    description = describe(load(paths.PARAMS).device)
    text = description.to_json()
    try:
        unchanged = paths.ENVIRONMENT.read_text() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        atomic_write_bytes(paths.ENVIRONMENT, text.encode())
    print(
        f"environment: {description.device} ({description.where}), torch {description.torch}: "
        f"{'unchanged' if unchanged else f'written to {paths.ENVIRONMENT}'}"
    )


if __name__ == "__main__":
    run_stage("environment", main)
