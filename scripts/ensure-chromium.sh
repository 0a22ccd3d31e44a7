#!/usr/bin/env bash
# Makes sure a headless Chromium (used by tests/e2e/test_diff_page_browser.py to load the shadow
# diff page as a person would) is on PATH. Idempotent: exits 0 at once when `chromium` already
# renders a page headless; otherwise installs Debian's `chromium` package non-interactively,
# without recommends. No driver is needed: the test speaks the DevTools protocol itself.
set -euo pipefail

browser() { command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true; }
works() {
  local bin
  bin=$(browser)
  [ -n "$bin" ] || return 1
  local profile
  profile=$(mktemp -d)
  # --no-sandbox: the sandbox refuses to start as root (CI containers); the page is our own.
  if "$bin" --headless=new --no-sandbox --disable-gpu --user-data-dir="$profile" \
      --dump-dom 'data:text/html,<p id=ok>ok</p>' 2>/dev/null | grep -q 'id="ok"'; then
    rm -rf "$profile"; return 0
  fi
  rm -rf "$profile"; return 1
}
if works; then
  exit 0
fi

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"
apt_ready chromium chromium "install Chromium (or Chrome as 'chromium' on PATH) by hand"
apt_install chromium chromium

if ! works; then
  echo "chromium: still cannot render a page headless after installing chromium" >&2
  exit 1
fi
echo "chromium: $("$(browser)" --version 2>/dev/null | head -n1)" >&2
