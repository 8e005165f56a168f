"""The team's operations: the tracking server (PostgreSQL, its guard, its users),
the MLflow UI on the project's runs, the runs a crash left RUNNING.
"""
