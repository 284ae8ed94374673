"""A Proxy-Wasm ABI 0.2.1 host on wasmtime.

Modules:

- ``abi``: the spec's numbers and serialization (pure Python).
- ``config``: ``PluginConfig`` and ``parse_plugin_config`` (pure Python).
- ``shared``: per-process shared data, shared queues, plugin metrics and binding status
  (pure Python; ``metrics_snapshot()`` and ``binding_statuses()`` are for the metrics
  exporter and the admin API).
- ``runtime``: the process's wasmtime Engine, its epoch ticker, compiled-module cache and
  raw call helpers.
- ``vm``: ``WasmVM``, one Store + Instance with its contexts and host functions.
- ``plugin``: ``WasmPlugin``, a binding with its failure policy, and ``get_plugin``.

Importing this package does not import wasmtime; ``runtime``, ``vm`` and ``plugin`` do.
The HTTP filter that runs plugins is ``omnirelay.filters.http.wasm``.
"""
from omnirelay.extensions.wasm.abi import ABI_VERSION
from omnirelay.extensions.wasm.config import PluginConfig, parse_plugin_config
from omnirelay.extensions.wasm.shared import binding_statuses, metrics_snapshot

__all__ = ["ABI_VERSION", "PluginConfig", "binding_statuses", "metrics_snapshot",
           "parse_plugin_config"]
