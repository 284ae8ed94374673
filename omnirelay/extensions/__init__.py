"""Extension hosts: ways to run code that is not part of OmniRelay on the data path.

- ``omnirelay.extensions.wasm``: a Proxy-Wasm ABI 0.2.1 host on wasmtime (used by the
  built-in filter ``omnirelay.filters.http.wasm``).

- ``omnirelay.extensions.native``: native plugins, shared libraries built against
  ``omnirelay_plugin.h`` (loaded with cffi; filter ``omnirelay.filters.http.native``).

- ``omnirelay.extensions.dsl``: the rule language (parser, compiler, step budget; filter
  ``omnirelay.filters.http.dsl``).

Shared by every host:

- ``support``: what this build runs (kinds, ABI versions, host features).
- ``packages``: signed extension packages (format, signing, verification, trust) and the
  record of what loaded and what was refused.
- ``watch``: hot reload of package files (a Relay's ``PackageWatcher``).
- ``status``: every binding's state for the admin's /extensions and the metrics.
"""
