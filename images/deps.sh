#!/usr/bin/env bash
# Debian packages that build and run the CPU image (idempotent): buildah builds, podman runs,
# runc is the OCI runtime (crun fails where cgroups are in hybrid mode), mmdebstrap makes the base
# root filesystem from Debian packages, so no container registry is needed.
set -euo pipefail
exec bash "$(dirname "$0")/../.ci/system-deps.sh" buildah:buildah podman:podman runc:runc mmdebstrap:mmdebstrap
