#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) for the wgpu tests
# (`cargo test --features wgpu --test wgpu`) on a machine without a GPU. Run as root.
# Debian 12's own Mesa (22.3) is reported to crash in burn's matmul shaders;
# bookworm-backports has Mesa 25.0.7, which runs them. Elsewhere any recent Vulkan driver
# will do.
set -euo pipefail
if vulkaninfo --summary 2>/dev/null | grep -q "driverName.*llvmpipe"; then
    echo "lavapipe already installed"
    exit 0
fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
    cat > /etc/apt/sources.list.d/framepack-backports.sources <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    target=(-t bookworm-backports)
else
    target=()
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${target[@]}" mesa-vulkan-drivers libvulkan1 vulkan-tools >/dev/null
vulkaninfo --summary 2>/dev/null | grep -E "driverName|driverInfo|deviceName"
