"""Engines: the vLLM launcher/supervisor and the replica simulator."""
