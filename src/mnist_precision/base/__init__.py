"""The base every layer stands on, without torch or MLflow: errors that name their
fix, atomic files, paths, signals, params, the precision table as data, the
names of what is logged, and the description of the machine.
"""
