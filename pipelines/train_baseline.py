"""Pipeline stage `train_xgboost` / `train_celltypist`: the baselines through the one training entry
(``pipelines/train.py --model xgboost|celltypist`` does the same)."""

from __future__ import annotations

import sys

from sctab.models import BASELINES
from sctab.tracking import TrackingServerError

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train import _main  # noqa: E402 - the stage script beside this one


if __name__ == "__main__":
    try:
        _main(models=BASELINES)
    except TrackingServerError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)
