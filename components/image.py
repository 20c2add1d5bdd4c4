"""The container image every step runs in.

The default of ``ClusterSettings.step_image`` (pipeline/cluster.py), which sets every task's image when
the pipeline is compiled: ``$AUTOFT_STEP_IMAGE`` or the local tag. A release compiles against the pushed
image's digest instead (pipeline/release.py).
"""

import os

STEP_IMAGE_ENV = "AUTOFT_STEP_IMAGE"
# The tag images/step/Dockerfile builds locally: a placeholder for a cluster, where a digest is used.
DEFAULT_STEP_IMAGE = "autoft-step:0.1.0"
STEP_IMAGE = os.environ.get(STEP_IMAGE_ENV, "").strip() or DEFAULT_STEP_IMAGE
