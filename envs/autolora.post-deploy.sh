#!/usr/bin/env bash
# Runs once after Snakemake creates envs/autolora.yaml, inside it, from the workflow's working
# directory (the repository root): install the `autolora` package the rules call, without
# touching the dependencies conda resolved.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation --editable .
