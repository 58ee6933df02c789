#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need: Debian's chromium and the playwright
# Python package. Playwright downloads no browser of its own: the tests drive Debian's chromium
# (executable_path = `which chromium`). Idempotent and quiet; run it as root in CI (or with sudo).
#
#   scripts/install_browser.sh              # into .venv when it exists, else python3's environment
#   PYTHON=/path/to/python scripts/install_browser.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PLAYWRIGHT_SPEC="playwright>=1.65"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

fail() {
  echo "install_browser: $*" >&2
  [ -s "$LOG" ] && tail -n 30 "$LOG" >&2
  exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "run as root (or install sudo) to install chromium with apt-get"
  SUDO=(sudo)
fi

if ! command -v chromium >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "chromium is missing and apt-get is not available (Debian/Ubuntu only)"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOG" 2>&1 || fail "apt-get update failed"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$LOG" 2>&1 \
    || fail "apt-get install chromium failed"
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "$PLAYWRIGHT_SPEC" >"$LOG" 2>&1 || fail "pip install $PLAYWRIGHT_SPEC failed"
fi

# Smoke test: headless chromium starts and renders a page.
"$PYTHON" - >"$LOG" 2>&1 <<'PY' || fail "chromium does not start under playwright"
import shutil
from playwright.sync_api import sync_playwright

args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=args, headless=True)
    page = browser.new_page()
    page.set_content("<p id=ok>ok</p>")
    assert page.inner_text("#ok") == "ok"
    print(browser.version)
    browser.close()
PY
echo "install_browser: chromium $(tail -n 1 "$LOG") with $("$PYTHON" -m pip show playwright 2>/dev/null | sed -n 's/^Version: /playwright /p')"
