"""A run's result in formats other tools read (`pretune export`, `export_run`); see `formats`."""
