"""Former entry of the `train_xgboost` / `train_celltypist` stages, kept for old commands: it is `train.py`.

`python pipelines/train_baseline.py --model xgboost ...` runs exactly `python pipelines/train.py --model xgboost
...`, which now trains all five models (and which dvc.yaml runs).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    spec = importlib.util.spec_from_file_location("pipeline_train", Path(__file__).with_name("train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.main(argv)


if __name__ == "__main__":
    main()
