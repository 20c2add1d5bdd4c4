"""A saved classifier as an MLflow pyfunc model: encoded images in, class names and probabilities out.

The MLflow model holds the classifier folder (``model.safetensors`` + ``model_card.json``) as an
artifact and ``autoft/pyfunc_model.py`` as its code ("models from code"); loading it rebuilds the
open_clip model from the card and reads the weights with safetensors, so serving unpickles nothing.
Anything that can load a pyfunc model can then use the registered champion:
``mlflow.pyfunc.load_model("models:/autoft-clip@champion").predict(frame)`` with
``frame = pandas.DataFrame({"image": [png_or_jpeg_bytes, ...]})``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from autoft.data.images import to_rgb
from autoft.errors import DataError

IMAGE_COLUMN = "image"
CLASSIFIER_ARTIFACT = "classifier"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
    outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability")]),
)


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc over :class:`autoft.models.classifier.CLIPClassifier`."""

    def load_context(self, context: Any) -> None:
        from autoft.data.transforms import eval_transform
        from autoft.models.classifier import load_classifier

        self.classifier = load_classifier(Path(context.artifacts[CLASSIFIER_ARTIFACT]))
        self.classifier.prepare_for_eval()
        self.classifier.eval()
        self.transform = eval_transform(self.classifier.image_spec)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        del context, params
        if IMAGE_COLUMN not in model_input:
            raise DataError(f"the input needs a column {IMAGE_COLUMN!r} of encoded images (PNG/JPEG bytes)")
        batch = torch.stack([self.transform(_decode(value)) for value in model_input[IMAGE_COLUMN]])
        with torch.no_grad():
            probabilities = torch.softmax(self.classifier(batch).float(), dim=1)
        best = probabilities.argmax(dim=1)
        return pd.DataFrame(
            {
                "label": [self.classifier.class_names[int(i)] for i in best],
                "probability": probabilities[torch.arange(len(best)), best].double().numpy(),
            }
        )


def _decode(value: Any) -> Image.Image:
    if isinstance(value, str):
        import base64

        value = base64.b64decode(value)  # JSON-serialised inputs carry bytes as base64
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            return to_rgb(image)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot decode an input image: {error}") from None


def example_input(size: int) -> pd.DataFrame:
    """One blank PNG of the model's input size: the input example stored with the model."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def log_classifier(folder: Path, run_id: str, name: str, tags: dict[str, str] | None = None) -> str:
    """Log a saved classifier folder as a pyfunc model of ``run_id`` (explicitly, never the "active" run);
    returns the model URI (``models:/<model id>``)."""
    from mlflow.models import Model

    from autoft.models.checkpoint import read_model_card

    card = read_model_card(folder)
    client = mlflow.MlflowClient()
    # Created here so the model lands in the RUN's experiment (left alone, MLflow picks the "current" one).
    logged = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id, tags=tags
    )
    info = Model.log(
        artifact_path=None,
        name=name,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=logged.model_id,
        # A code file, not a pickled object: loading the model runs our module, never unpickles one.
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={CLASSIFIER_ARTIFACT: str(folder)},
        signature=SIGNATURE,
        input_example=example_input(int(card["image"]["size"])),
        pip_requirements=[f"autoft-pipelines=={_version()}"],
    )
    return info.model_uri


def _version() -> str:
    from importlib.metadata import version

    return version("autoft-pipelines")
