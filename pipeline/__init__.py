"""The AutoFT Kubeflow pipeline: its DSL, compilation, local execution (kfp.local) and submission."""
