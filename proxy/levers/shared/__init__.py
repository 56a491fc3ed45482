"""The shared cache tier: exact and semantic entries on Redis, local mirrors in each sidecar
(docs/design/shared-cache.md)."""
