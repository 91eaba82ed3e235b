#!/usr/bin/env bash
# Installs what this project needs on Debian 12 and is missing: the system libraries it links
# (OpenSSL 3, nghttp2), the clients the tests drive (curl, openssl, h2load), and pytest.
# Idempotent: installs only what is absent. Needs root (or sudo) when something is missing.
set -euo pipefail

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in libssl-dev libnghttp2-dev pkg-config curl openssl nghttp2-client prometheus python3 python3-pip ca-certificates iptables nftables redis-server redis-tools socat; do
    have_pkg "$p" || need_pkgs+=("$p")
done
# DNS e2e (test_dns.py): dig, and dnsmasq as a binary only (dnsmasq-base: no service on port 53)
# TLS origination e2e (test_egress.py): nginx with its own CA
for p in dnsutils dnsmasq-base iproute2 nginx-light; do have_pkg "$p" || need_pkgs+=("$p"); done
# meshd replicas on etcd (test_meshd_ha.py, MeshEtcdTests): the tests start their own members
for p in etcd-server etcd-client; do have_pkg "$p" || need_pkgs+=("$p"); done
# MeshYAML (meshctl kube-inject) links libyaml
for p in libyaml-dev; do have_pkg "$p" || need_pkgs+=("$p"); done
# the Debian package (packaging/build-deb.sh, test_deb_package.py): lintian, chrpath
for p in lintian chrpath; do have_pkg "$p" || need_pkgs+=("$p"); done
# meshd's web page in a real browser (test_web_ui.py): headless Chromium and its driver
for p in chromium chromium-driver; do have_pkg "$p" || need_pkgs+=("$p"); done
# python3/pip may come from elsewhere (pyenv); only ask apt when no python3 is on PATH.
if command -v python3 >/dev/null; then
    tmp=(); for p in "${need_pkgs[@]}"; do [[ "$p" == python3 || "$p" == python3-pip ]] || tmp+=("$p"); done
    need_pkgs=("${tmp[@]+"${tmp[@]}"}")
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup-deps: installing ${need_pkgs[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! python3 -c "import pytest, h2, grpc, cryptography, opentelemetry.sdk, opentelemetry.proto, selenium" 2>/dev/null; then
    echo "setup-deps: installing pytest, h2, grpcio, OpenTelemetry and selenium (Python)" >&2
    python3 -m pip install -q pytest h2 grpcio kubernetes-validate cryptography opentelemetry-sdk opentelemetry-proto selenium || python3 -m pip install -q --break-system-packages pytest h2 grpcio kubernetes-validate cryptography opentelemetry-sdk opentelemetry-proto selenium
fi
if ! python3 -c "import opentelemetry.exporter.otlp.proto.http" 2>/dev/null; then
    echo "setup-deps: installing the OpenTelemetry OTLP/HTTP exporter (Python; tests/e2e/test_tracing.py)" >&2
    python3 -m pip install -q opentelemetry-exporter-otlp-proto-http || python3 -m pip install -q --break-system-packages opentelemetry-exporter-otlp-proto-http
fi
command -v swift >/dev/null || { echo "setup-deps: swift (6.x) is not on PATH; install the Swift toolchain first" >&2; exit 1; }
