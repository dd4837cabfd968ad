#!/usr/bin/env bash
# The GPU check of issue 16 (BENCHMARKS.md, "GPU check (issue 16)"): benchmarks/gpu_check.py with these arguments.
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
