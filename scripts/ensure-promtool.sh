#!/usr/bin/env bash
# Makes sure `promtool` (used by tests/integration/test_monitoring_config.py) is on PATH.
# Idempotent: exits 0 at once when promtool already works; otherwise installs Debian's
# `prometheus` package (which ships promtool) non-interactively, without recommends
# (no node-exporter daemon), and makes sure the install leaves no Prometheus server
# running or enabled: we only want the tool, not a daemon on :9090.
set -euo pipefail

works() { command -v promtool >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; }
if works; then
  exit 0
fi

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"
apt_ready promtool prometheus "install Prometheus' promtool by hand"

# Was a Prometheus server already running (ops' own)? Then we leave it alone.
running() { pgrep -x prometheus >/dev/null 2>&1; }
was_running=0
if running; then was_running=1; fi

# Keep the package's maintainer scripts from starting the daemon: the Debian way is a
# policy-rc.d that answers 101 ("action forbidden"). Only add one when none exists,
# and remove exactly the one we added.
policy=/usr/sbin/policy-rc.d
added_policy=0
cleanup() {
  if [ "$added_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  added_policy=1
fi

apt_install promtool prometheus

cleanup
added_policy=0

# Belt and braces: whatever the service manager did, stop and disable the server we installed.
if [ "$was_running" = 0 ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    if [ -x /etc/init.d/prometheus ]; then
      "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
      "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
  for _ in $(seq 1 20); do running || break; sleep 0.25; done
  if running; then
    echo "promtool: warning: a prometheus server is still running after install (pids: $(pgrep -x prometheus | tr '\n' ' '))" >&2
  fi
fi

# Verify the tool really works: version, plus a check of a trivial rule file.
if ! works; then
  echo "promtool: still not usable after installing prometheus" >&2
  exit 1
fi
tmp=$(mktemp --suffix=.yml)
trap 'rm -f "$tmp"; cleanup' EXIT
printf 'groups:\n  - name: smoke\n    rules:\n      - record: job:up:sum\n        expr: sum(up)\n' >"$tmp"
promtool check rules "$tmp" >/dev/null
echo "promtool: $(promtool --version 2>&1 | head -n1)" >&2
