"""optsample-run configs; installed as the package optsample.conf (Hydra needs the __init__.py for pkg://)."""
