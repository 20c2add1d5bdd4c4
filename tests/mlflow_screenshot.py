"""Render the MLflow UI of a finished run with headless Chromium (checked as the tests check it) and save
the compare view of its method children: `make mlflow-screenshot` (docs/images/mlflow-compare-methods.png).

    python tests/mlflow_screenshot.py runs/mlflow.db docs/images [--experiment autoft --model autoft-clip]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from servers import start_mlflow_server
from test_pipeline_local import check_mlflow_ui


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database", type=Path, help="the runs' SQLite file, e.g. runs/mlflow.db")
    parser.add_argument("out", type=Path, help="folder for mlflow-compare-methods.png")
    parser.add_argument("--experiment", default="autoft")
    parser.add_argument("--model", default="autoft-clip", help="the registered model whose champion is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server = start_mlflow_server(
            f"sqlite:///{args.database.resolve()}", str(args.database.parent / "mlartifacts"), Path(work)
        )
        try:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            try:
                MlflowClient(server.url).get_registered_model(args.model)
                model: str | None = args.model
            except MlflowException:  # the gate promotes only a model that beats the baselines and the champion
                print(f"no registered model {args.model!r}: the run's gate promoted nothing (see its report)")
                model = None
            shot = check_mlflow_ui(server.url, args.experiment, model, args.out)
        finally:
            server.stop()
    print(f"checked the MLflow UI and saved {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
