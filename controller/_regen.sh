#!/usr/bin/env bash
# Regenerates the committed gRPC code from telemetry.proto; run from the repo root.
set -euo pipefail
.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. controller/telemetry.proto
sed -i 's/^from controller import telemetry_pb2/from thrifty.controller import telemetry_pb2/' controller/telemetry_pb2_grpc.py
