"""The experiment runner (Hydra app, configs, result rows) and its scale-out pieces: :mod:`.distributed`
(torchrun ranks) and :mod:`.shards` (one config split across jobs)."""
