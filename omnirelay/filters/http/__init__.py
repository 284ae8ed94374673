"""Built-in HTTP filters, registered as omnirelay.filters.http.<name>."""
