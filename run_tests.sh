#!/usr/bin/env bash
# The test command: creates/reuses .venv (CPU torch pinned), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
exec python3 -m blade_nodes test "$@"
