"""The runner: the Hydra app and what it needs (configs, result rows, loggers, reports, studies, devices);
``guidance_tasks`` holds the ``guidance=`` and ``task=`` groups."""
