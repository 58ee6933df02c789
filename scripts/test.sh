#!/usr/bin/env bash
# Set up everything the tests need and run them: the venv with dev tools, the servers the tests
# start themselves (PostgreSQL, Redis), the headless browser for the playground test, then pytest.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
scripts/install_services.sh
if [ -x scripts/install_browser.sh ] && [ "${FLUXSERVE_SKIP_BROWSER_TESTS:-}" != 1 ]; then
  scripts/install_browser.sh
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
