#!/usr/bin/env bash
# Debian packages that build and run the CPU image (idempotent): buildah builds, podman runs,
# runc is the OCI runtime (crun fails where cgroups are in hybrid mode), mmdebstrap makes the base
# root filesystem from Debian packages, so no container registry is needed.
set -euo pipefail
need=()
for cmd in buildah:buildah podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # No recommends: crun (broken here) and the rootless helpers are not wanted.
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
