# Sourced by scripts/ensure-*.sh and bench/lib.sh: install missing Debian packages, as root or through sudo.

# apt_ready TOOL PACKAGE HINT: set SUDO (empty as root) or exit 1 saying why nothing can be installed here.
apt_ready() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
      echo "$1: not installed and not root (no sudo); run as root or: apt-get install $2" >&2
      exit 1
    fi
  else
    SUDO=()
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$1: not installed and no apt-get here; $3" >&2
    exit 1
  fi
}

# apt_install TOOL PACKAGE...: non-interactive, without recommends (no extra daemons); one update for them all.
apt_install() {
  local tool=$1
  shift
  echo "$tool: not found; installing Debian package(s) $*" >&2
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
