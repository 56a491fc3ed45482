"""Benchmarks: each module `thrifty.bench.<name>` exposes `main(argv) -> int` and prints a JSON last line."""
