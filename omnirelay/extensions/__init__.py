"""Extension hosts: ways to run code that is not part of OmniRelay on the data path.

- ``omnirelay.extensions.wasm``: a Proxy-Wasm ABI 0.2.1 host on wasmtime (used by the
  built-in filter ``omnirelay.filters.http.wasm``).

Native plugins (a cffi function table), the rule DSL and signed extension packages are
later increments (issue 5).
"""
