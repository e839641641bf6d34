"""Entry point for test_distributed: optsample.runner.app's main, with rank 1 failing while it samples."""

import os

from optsample.runner import app as run


def failing_stream_run(*args, **kwargs):
    raise RuntimeError("rank 1 fails on purpose")


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        run.stream_run = failing_stream_run
    run.main()
