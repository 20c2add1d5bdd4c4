"""Names of a trial's user attributes, shared by the objective (torch) and select-best (no torch).

User attributes are read by no sampler or pruner, so what is stored here never steers the search.
"""

OOD_VAL_ATTR = "ood_val"  # the trial's score on the search's OOD-val
SE_ATTR = "ood_val_se"  # its standard error over source images (autoft.standard_error)
HOLDOUT_ATTR = "ood_val_holdout"  # the same weights scored on the held-out OOD-val images
HOLDOUT_SE_ATTR = "ood_val_holdout_se"
