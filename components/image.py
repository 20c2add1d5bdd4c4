"""The container image every step runs in.

Read once, when the component modules are imported (that is, at compile time): set
``AUTOFT_STEP_IMAGE`` before ``autoft compile`` to point a compiled pipeline at another registry or tag.
"""

import os

STEP_IMAGE_ENV = "AUTOFT_STEP_IMAGE"
DEFAULT_STEP_IMAGE = "autoft-step:0.1.0"  # the tag images/step/Dockerfile builds
STEP_IMAGE = os.environ.get(STEP_IMAGE_ENV, "").strip() or DEFAULT_STEP_IMAGE
