"""Pipeline stage `train_<model>`: any of the five models through the one training entry, tracked in MLflow."""

from sctab.train.command import main

if __name__ == "__main__":
    main()
