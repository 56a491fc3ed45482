"""Closed-loop quality in the sidecar: shadow evaluation, judges, the cache watch, the control group."""
