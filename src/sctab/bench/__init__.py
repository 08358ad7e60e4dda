"""`make bench`: loader and scTab throughput against in-run baselines (issue 7). See runner.py."""
