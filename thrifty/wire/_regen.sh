#!/usr/bin/env bash
# Regenerates the committed gRPC code from telemetry.proto; run from the repo root.
set -euo pipefail
.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. thrifty/wire/telemetry.proto
