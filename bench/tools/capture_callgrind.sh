#!/usr/bin/env bash
# The user-space instructions capture adds per connection on the outbound sidecar (root; needs
# valgrind, nginx, h2load, iptables): in a network namespace with `meshctl capture apply` rules,
# an outbound sidecar with `capture: true` under callgrind takes N connections (one request each,
# Connection: close) to a VIP, then N straight to its listener (http_proxy style), in runs of N and
# 2N so that start-up cancels out: per connection = (total(2N) - total(N)) / N for each mode. Not a
# RESULTS file: a check to run by hand (bench/README.md, "Notes on earlier results").
#   sudo N=2000 bench/tools/capture_callgrind.sh
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/.build/release/sidecar}
CTL=${CTL:-$ROOT/.build/release/meshctl}
N=${N:-2000}
W=$(mktemp -d /tmp/capture-callgrind.XXXXXX); chmod 755 $W
D=$W/w; mkdir -p $D; chmod 755 $D
NS=cgcap-$$
cleanup() { ip netns pids $NS 2>/dev/null | xargs -r kill -9 2>/dev/null; ip netns del $NS 2>/dev/null; rm -rf $W; }
trap cleanup EXIT
bash $ROOT/certs/make-pki.sh $D/pki client server >/dev/null 2>&1
chmod -R a+rX $D/pki; mkdir -p $D/cg; chown 1337:1337 $D/cg
cp $BIN $D/sidecar; chmod 755 $D/sidecar
ip netns add $NS; nsx() { ip netns exec $NS "$@"; }
nsx ip link set lo up
nsx ip link add mb0 type veth peer name mb1; nsx ip addr add 10.251.0.1/24 dev mb0
nsx ip link set mb0 up; nsx ip link set mb1 up; nsx ip route add default via 10.251.0.2 dev mb0
nsx $CTL capture apply --no-dns >/dev/null || exit 1
mkdir -p $D/nginx/logs
cat > $D/nginx/nginx.conf <<NG
worker_processes 1; daemon off; pid $D/nginx/nginx.pid; error_log $D/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:8080; location / { return 200 "hello\n"; } } }
NG
cat > $D/in.yaml <<Y
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server, namespace: default}
spec:
  workload: {service: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: 15100}
  tls: {certChain: $D/pki/server/cert-chain.pem, privateKey: $D/pki/server/key.pem, trustBundle: $D/pki/root-cert.pem}
  inbound: {address: 127.0.0.1, port: 15006, appAddress: 127.0.0.1:8080}
  clusters: []
  routes: []
Y
cat > $D/out.yaml <<Y
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: client, namespace: default}
spec:
  workload: {service: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: 15000}
  tls: {certChain: $D/pki/client/cert-chain.pem, privateKey: $D/pki/client/key.pem, trustBundle: $D/pki/root-cert.pem}
  outbound: {address: 127.0.0.1, port: 15001, capture: true}
  clusters:
    - {name: server, addresses: [240.240.0.10], port: 80, tls: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/server], endpoints: [127.0.0.1:15006]}
  routes:
    - {hosts: [server], cluster: server}
Y
nsx nginx -c $D/nginx/nginx.conf -p $D/nginx & 
P=(setpriv --reuid=1337 --regid=1337 --clear-groups)
nsx "${P[@]}" $D/sidecar --config $D/in.yaml > $D/in.log 2>&1 &
one() {  # $1 name, $2 url
  nsx "${P[@]}" valgrind --tool=callgrind --callgrind-out-file=$D/cg/$1.out --dump-instr=no $D/sidecar --config $D/out.yaml > $D/out-$1.log 2>&1 &
  local VP=$!
  for i in $(seq 1 100); do nsx curl -s -o /dev/null http://127.0.0.1:15000/ready && break; sleep 0.3; done
  echo "$1:"; nsx h2load --h1 -t 1 -c 8 -n $N -H "Connection: close" -H ":authority: server" "$2" | grep -E "^requests:"
  pkill -TERM -f "callgrind-out-file=$D/cg/$1.out"; wait $VP
}
one base http://127.0.0.1:15001/ 
N0=$N; N=$((N * 2))
one vip2 http://240.240.0.10:80/
one proxy2 http://127.0.0.1:15001/
N=$N0
one vip http://240.240.0.10:80/
total() { callgrind_annotate "$D/cg/$1.out" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",", "", $1); print $1}'; }
echo "instructions per connection: vip $(( ($(total vip2) - $(total vip)) / N )), http_proxy $(( ($(total proxy2) - $(total base)) / N )) (user space, callgrind)"
