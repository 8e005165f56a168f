"""`python -m mnist_precision.analysis.crossover`: the command without the console script (a bare GPU machine)."""

from mnist_precision.analysis.crossover.command import main
from mnist_precision.base.entry import run_stage

run_stage("crossover", main)
