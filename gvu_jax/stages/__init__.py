"""A run, stage by stage: the checked config, the run's inputs (context.py),
pretraining, GvU, and the report."""
