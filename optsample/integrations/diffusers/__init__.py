"""diffusers: checkpoints as denoisers (adapters.py), optsample samplers as a diffusers scheduler
(scheduler.py), prompts (prompts.py) and the runner's ``model=`` options (runner.py)."""
