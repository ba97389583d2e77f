#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite. Extra arguments go to pytest.
# Usage: bash scripts/test.sh [-k pattern] [-x] ...
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
bash "$REPO_ROOT/scripts/setup_env.sh"
cd "$REPO_ROOT"
echo
echo "==> Running the test suite"
# The environment above is complete, so no test may skip for a missing dependency (tests/conftest.py).
BGMASK_TEST_REQUIRE_ALL=1 exec "$VENV/bin/python" -m pytest "$@"
