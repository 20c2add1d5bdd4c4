"""Hyperparameter search: the space as data, the shared Optuna study, and the trial objective."""
