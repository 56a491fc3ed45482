"""The per-pod sidecar: OpenAI-compatible interception, caches, router, balancer, accounting."""
