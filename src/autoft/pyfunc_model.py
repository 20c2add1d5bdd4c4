"""The code MLflow runs to build the served model ("models from code": no pickled object is stored)."""

from mlflow.models import set_model

from autoft.serving import ImageClassifierModel

set_model(ImageClassifierModel())
