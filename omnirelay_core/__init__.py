"""OmniRelay's compiled hot path. Nothing here imports omnirelay or meshkit;
Python code reaches it through omnirelay._core only."""
