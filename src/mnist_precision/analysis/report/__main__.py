"""`python -m mnist_precision.analysis.report`: the same as `mnist-precision report`."""

from mnist_precision.analysis.report import main
from mnist_precision.base.entry import run_stage

run_stage("report", main)
