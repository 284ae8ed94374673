"""The `omnirelay` command line (entry point: omnirelay.cli.main:main)."""
