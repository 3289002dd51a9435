#!/usr/bin/env bash
# Installs what the loopback SLURM test cluster needs (tests/slurm_cluster.py); a no-op when the
# packages are already there. Debian/Ubuntu, as root (or with sudo). The packages start no daemon.
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "slurm-deps: already installed: ${packages[*]}"
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
