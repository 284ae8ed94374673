"""Security helpers shared by the security filters (omnirelay.filters.http.jwt_authn and
omnirelay.filters.http.rbac):

- ``jwt``: JWS/JWK/JWK Set decoding, signature verification (via ``cryptography``) with a
  strict algorithm allow list, claim checks;
- ``jwks``: key sources (local file re-read on change; remote URL fetched through a cluster,
  cached, refreshed, stale-while-revalidate);
- ``upstream``: the cluster directory and the small HTTP client used for side fetches;
- ``matchers``: path normalization, string/header/claim matchers, source CIDR sets;
- ``rbac``: RBAC policy compilation and evaluation.
"""
