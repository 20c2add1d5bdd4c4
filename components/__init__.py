"""One thin Kubeflow Pipelines component per AutoFT step; each calls into ``autoft.stages``.

Component functions are serialized into the pipeline IR and executed in the step image, where the
project (``autoft``, ``components``) is installed; that is why every import sits inside the function.
"""
