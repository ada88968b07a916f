#!/usr/bin/env bash
# Installs the Debian packages dsmil3d builds with, when any is missing (run as root on Debian/Ubuntu).
set -euo pipefail
packages=(cmake g++ make libeigen3-dev libnifti2-dev libznz-dev nifti-bin doctest-dev libcli11-dev
          libfmt-dev libspdlog-dev nlohmann-json3-dev libtomlplusplus-dev libpng-dev zlib1g-dev libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
