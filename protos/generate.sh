#!/usr/bin/env bash
# Generates the Python stubs of the rsgrpc.v1 protos into OUT (default: the repo root).
# Usage: protos/generate.sh [OUT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(dirname "$here")}
cd "$here"
python3 -m grpc_tools.protoc -I. -Ithird_party \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  rsgrpc/v1/*.proto
