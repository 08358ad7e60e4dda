"""MLflow "models from code" entry point of the registered scTab models (see pyfunc.py)."""

import mlflow.models

from sctab.registry.pyfunc import SctabAnnotatorModel

mlflow.models.set_model(SctabAnnotatorModel())
