#!/usr/bin/env bash
# The one command for the GPU machine (perf/device/README.md):
#     bash perf/device/run.sh            # device: /opt/torch/.venv/bin/python3, bundle .device_bundle/, results to $OUT
#     bash perf/device/run.sh --dry      # here, on the CPU: .venv/bin/python, perf/results/device_dry/
# DEVICE_PYTHON overrides the interpreter. Everything else is perf/device/run.py.
set -u
cd "$(dirname "$0")/../.."
if [[ " $* " == *" --dry "* ]]; then
    PY=${DEVICE_PYTHON:-.venv/bin/python}
else
    PY=${DEVICE_PYTHON:-/opt/torch/.venv/bin/python3}
fi
exec "$PY" perf/device/run.py "$@"
