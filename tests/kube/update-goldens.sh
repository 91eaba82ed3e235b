#!/usr/bin/env bash
# Regenerates tests/kube/golden from tests/kube/in with the built meshctl (after a deliberate
# change to what kube-inject adds: review the diff, it is the change users will see).
set -euo pipefail
cd "$(dirname "$0")"
meshctl=${MESHCTL_BIN:-../../.build/debug/meshctl}
mkdir -p golden
for f in in/*.yaml; do
    n=$(basename "$f" .yaml)
    "$meshctl" kube-inject -f "$f" -o "golden/$n.classic.yaml" 2>/dev/null
    "$meshctl" kube-inject --native-sidecar -f "$f" -o "golden/$n.native.yaml" 2>/dev/null
done
"$meshctl" kube-manifests --root-cert fixtures/root-cert.pem -o golden/manifests.file.yaml
"$meshctl" kube-manifests --root-cert fixtures/root-cert.pem --replicas 3 --store etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379 \
    --app-namespace shop --app-namespace default -o golden/manifests.etcd.yaml
