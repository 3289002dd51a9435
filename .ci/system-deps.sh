#!/usr/bin/env bash
# System packages the test suite needs, from Debian: SLURM + munge for the private loopback
# cluster (tests/slurm_cluster.py) and Chromium for the report's browser test. Idempotent: a
# no-op when everything is installed. Needs root (or sudo). The packages start no daemon.
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps: already installed: ${packages[*]}"
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
