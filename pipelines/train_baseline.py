"""Pipeline stage `train_xgboost` / `train_celltypist` (``pipelines/train.py --model xgboost`` does the same)."""

from functools import partial

from sctab.models import BASELINES
from sctab.train.command import main as _main

main = partial(_main, models=BASELINES)

if __name__ == "__main__":
    main()
