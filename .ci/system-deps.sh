#!/usr/bin/env bash
# Installs Debian packages that are missing (idempotent). Arguments: COMMAND:PACKAGE pairs; a package
# is installed only when its command is not on PATH. Without arguments: what the tests need,
# prometheus (server + promtool) for the metrics test.
set -euo pipefail
[ $# -gt 0 ] || set -- prometheus:prometheus
need=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # No recommends: for the image tools, crun (broken here) and the rootless helpers are not wanted.
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
