"""Where the tests find the repository, whatever folder of tests/ they sit in."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
PIPELINES = REPO_ROOT / "pipelines"
TEST_DATA = REPO_ROOT / "tests" / "data"
