"""The experiment runner: Hydra app (app.py, ``optsample-run``), configs, result rows, loggers, tables
(report.py, ``optsample-table``), the default study (study.py, ``optsample-study``), devices, the
``guidance=`` / ``task=`` groups (guidance_tasks.py) ``optsample-schedule`` (schedule_app.py),
and the scale-out pieces: distributed.py (torchrun ranks) and shards.py (one config split across jobs).

It may import everything below it; nothing in the library imports it (import-linter, pyproject.toml)."""
