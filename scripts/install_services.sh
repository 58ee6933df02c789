#!/usr/bin/env bash
# Install the servers the tests start for themselves (tests/services/): PostgreSQL and Redis,
# from Debian's packages, when they are missing. The tests run them on free loopback ports as
# throwaway instances; nothing is configured or started here. Idempotent and quiet; run it as
# root in CI (or with sudo). The Python side (psycopg, redis, boto3, moto) is scripts/setup.sh --dev.
set -euo pipefail

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

fail() {
  echo "install_services: $*" >&2
  [ -s "$LOG" ] && tail -n 30 "$LOG" >&2
  exit 1
}

have_postgres() {
  # Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off PATH.
  command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
have_postgres || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "run as root (or install sudo) to install ${missing[*]} with apt-get"
  SUDO=(sudo)
fi
command -v apt-get >/dev/null 2>&1 || fail "${missing[*]} missing and apt-get is not available (Debian/Ubuntu only)"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOG" 2>&1 || fail "apt-get update failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
  >>"$LOG" 2>&1 || fail "apt-get install ${missing[*]} failed"
have_postgres || fail "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
command -v redis-server >/dev/null 2>&1 || fail "redis-server installed, but not on PATH"
echo "install_services: installed ${missing[*]}"
