#!/usr/bin/env bash
# Test PKI for the sidecar (openssl CLI only). Keys are written only at run time (gitignored).
#
#   make-pki.sh OUTDIR NAME [NAME...]     root CA + intermediate CA + one leaf per NAME
#   make-pki.sh --expired OUTDIR NAME     an already-expired leaf for NAME from the existing
#                                         intermediate -> OUTDIR/expired/NAME/
#   make-pki.sh --foreign OUTDIR NAME     a separate self-signed root and a leaf with the same
#                                         SPIFFE SAN -> OUTDIR/foreign/{root-cert.pem,NAME/}
#
# Layout (Istio plug-in CA file names):
#   OUTDIR/root-cert.pem  OUTDIR/root-key.pem      root CA, EC P-256, self-signed, 10 years
#   OUTDIR/ca-cert.pem    OUTDIR/ca-key.pem        intermediate CA signed by the root
#   OUTDIR/cert-chain.pem                          intermediate + root
#   OUTDIR/NAME/key.pem                            EC P-256 (PKCS#8), mode 0600
#   OUTDIR/NAME/cert.pem                           leaf, 1 year, URI SAN spiffe://TD/ns/NS/sa/NAME,
#                                                  DNS SAN NAME, serverAuth+clientAuth
#   OUTDIR/NAME/cert-chain.pem                     leaf + intermediate
#   OUTDIR/NAME/key-and-chain.pem                  key + leaf + intermediate (HAProxy), mode 0600
#
# Environment: TRUST_DOMAIN (default cluster.local), NAMESPACE (default default).
#
# Idempotent: an existing root/intermediate is reused; an existing leaf is kept when it still
# verifies against them, matches its key and carries the expected SPIFFE SAN; otherwise it is
# reissued. Every leaf is checked with `openssl verify` before the script returns.
set -euo pipefail

TRUST_DOMAIN="${TRUST_DOMAIN:-cluster.local}"
NAMESPACE="${NAMESPACE:-default}"

die() { echo "make-pki.sh: error: $*" >&2; exit 1; }
log() { echo "make-pki.sh: $*" >&2; }
usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

command -v openssl >/dev/null || die "openssl not found in PATH"

MODE=normal
case "${1:-}" in
    --expired) MODE=expired; shift ;;
    --foreign) MODE=foreign; shift ;;
    -h|--help|"") usage ;;
    -*) die "unknown option $1" ;;
esac
[ $# -ge 2 ] || usage
OUT="$1"; shift
if [ "$MODE" != normal ] && [ $# -ne 1 ]; then die "--$MODE takes exactly one NAME"; fi
for n in "$@"; do
    [[ "$n" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "bad NAME '$n' (use a DNS label: a-z 0-9 . -)"
done

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

spiffe_id() { echo "spiffe://${TRUST_DOMAIN}/ns/${NAMESPACE}/sa/$1"; }
rand_serial() { echo "0x$(openssl rand -hex 16)"; }

# Write a key with mode 0600 from the first byte on.
genkey() {
    ( umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null )
    chmod 600 "$1"
}

cat >"$TMP/ext.cnf" <<'EOF'
[ req ]
distinguished_name     = req_dn
prompt                 = no
[ req_dn ]
CN                     = unused

[ v3_root ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ v3_inter ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_leaf ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyAgreement
extendedKeyUsage       = serverAuth, clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = @san

[ san ]
URI.1 = ${ENV::LEAF_URI}
DNS.1 = ${ENV::LEAF_DNS}
EOF
# The [san] section references environment variables; give them harmless defaults so the
# file also parses when a non-leaf section is used.
export LEAF_URI="spiffe://${TRUST_DOMAIN}/unused" LEAF_DNS="unused"

# make_root DIR CN: self-signed root (reused when present and consistent)
make_root() {
    local dir="$1" cn="$2"
    if [ -s "$dir/root-cert.pem" ] && [ -s "$dir/root-key.pem" ] && key_matches "$dir/root-cert.pem" "$dir/root-key.pem"; then
        return 0
    fi
    log "creating root CA in $dir"
    genkey "$dir/root-key.pem"
    openssl req -new -x509 -sha256 -days 3650 -key "$dir/root-key.pem" \
        -subj "/O=${TRUST_DOMAIN}/CN=$cn" -set_serial "$(rand_serial)" \
        -config "$TMP/ext.cnf" -extensions v3_root -out "$dir/root-cert.pem" \
        || die "creating the root CA in $dir failed"
    chmod 644 "$dir/root-cert.pem"
}

key_matches() { # CERT KEY
    local a b
    a="$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" || return 1
    b="$(openssl pkey -in "$2" -pubout 2>/dev/null)" || return 1
    [ -n "$a" ] && [ "$a" = "$b" ]
}

# sign_leaf CSR CACERT CAKEY NAME OUTCERT
sign_leaf() {
    LEAF_URI="$(spiffe_id "$4")" LEAF_DNS="$4" \
        openssl x509 -req -sha256 -days 365 -in "$1" -CA "$2" -CAkey "$3" \
        -set_serial "$(rand_serial)" -extfile "$TMP/ext.cnf" -extensions v3_leaf \
        -out "$5" 2>/dev/null || die "signing the leaf for $4 failed"
    chmod 644 "$5"
}

make_csr() { # KEY NAME OUTCSR
    openssl req -new -sha256 -key "$1" -subj "/O=${TRUST_DOMAIN}/CN=$2" -config "$TMP/ext.cnf" -out "$3" \
        || die "CSR for $2 failed"
}

has_san() { # CERT NAME
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | grep -qF "URI:$(spiffe_id "$2")"
}

# verify_ok ROOT INTERMEDIATE|"" CERT [extra openssl verify args]
verify_ok() {
    local root="$1" inter="$2" cert="$3"; shift 3
    local args=(-CAfile "$root" -x509_strict -purpose sslserver)
    [ -n "$inter" ] && args+=(-untrusted "$inter")
    openssl verify "${args[@]}" "$@" "$cert" >/dev/null 2>&1 &&
    openssl verify "${args[@]/sslserver/sslclient}" "$@" "$cert" >/dev/null 2>&1
}

# write_leaf_files DIR NAME CACERT CAKEY: key.pem cert.pem cert-chain.pem key-and-chain.pem
write_leaf_files() {
    local d="$1" name="$2" cacert="$3" cakey="$4"
    mkdir -p "$d"
    genkey "$d/key.pem"
    make_csr "$d/key.pem" "$name" "$TMP/$name.csr"
    sign_leaf "$TMP/$name.csr" "$cacert" "$cakey" "$name" "$d/cert.pem"
}

assemble_chain() { # DIR CHAINTAIL...
    local d="$1"; shift
    cat "$d/cert.pem" "$@" >"$d/cert-chain.pem"
    chmod 644 "$d/cert-chain.pem"
    ( umask 077; cat "$d/key.pem" "$d/cert-chain.pem" >"$d/key-and-chain.pem" )
    chmod 600 "$d/key-and-chain.pem" "$d/key.pem"
}

require_ca() {
    for f in root-cert.pem ca-cert.pem ca-key.pem; do
        [ -s "$OUT/$f" ] || die "$OUT/$f missing: run 'make-pki.sh $OUT NAME' first"
    done
}

# ---------------------------------------------------------------- normal mode
if [ "$MODE" = normal ]; then
    make_root "$OUT" "Mesh Test Root CA"

    inter_ok=0
    if [ -s "$OUT/ca-cert.pem" ] && [ -s "$OUT/ca-key.pem" ] && key_matches "$OUT/ca-cert.pem" "$OUT/ca-key.pem" \
       && openssl verify -CAfile "$OUT/root-cert.pem" "$OUT/ca-cert.pem" >/dev/null 2>&1; then
        inter_ok=1
    fi
    if [ $inter_ok = 0 ]; then
        log "creating intermediate CA in $OUT"
        genkey "$OUT/ca-key.pem"
        openssl req -new -sha256 -key "$OUT/ca-key.pem" -subj "/O=${TRUST_DOMAIN}/CN=Mesh Test Intermediate CA" \
            -config "$TMP/ext.cnf" -out "$TMP/ca.csr" || die "intermediate CSR failed"
        openssl x509 -req -sha256 -days 1825 -in "$TMP/ca.csr" -CA "$OUT/root-cert.pem" -CAkey "$OUT/root-key.pem" \
            -set_serial "$(rand_serial)" -extfile "$TMP/ext.cnf" -extensions v3_inter -out "$OUT/ca-cert.pem" 2>/dev/null \
            || die "signing the intermediate failed"
        chmod 644 "$OUT/ca-cert.pem"
    fi
    cat "$OUT/ca-cert.pem" "$OUT/root-cert.pem" >"$OUT/cert-chain.pem"
    chmod 644 "$OUT/cert-chain.pem"
    openssl verify -x509_strict -CAfile "$OUT/root-cert.pem" "$OUT/ca-cert.pem" >/dev/null \
        || die "intermediate does not verify against the root"

    for name in "$@"; do
        d="$OUT/$name"
        if [ -s "$d/cert.pem" ] && [ -s "$d/key.pem" ] && key_matches "$d/cert.pem" "$d/key.pem" \
           && has_san "$d/cert.pem" "$name" \
           && openssl x509 -in "$d/cert.pem" -noout -checkend 86400 >/dev/null 2>&1 \
           && verify_ok "$OUT/root-cert.pem" "$OUT/ca-cert.pem" "$d/cert.pem"; then
            :   # keep the existing leaf
        else
            log "issuing leaf for $name ($(spiffe_id "$name"))"
            write_leaf_files "$d" "$name" "$OUT/ca-cert.pem" "$OUT/ca-key.pem"
        fi
        assemble_chain "$d" "$OUT/ca-cert.pem"
        verify_ok "$OUT/root-cert.pem" "$OUT/ca-cert.pem" "$d/cert.pem" \
            || { openssl verify -CAfile "$OUT/root-cert.pem" -untrusted "$OUT/ca-cert.pem" "$d/cert.pem" >&2 || true; die "leaf $name does not verify"; }
        openssl verify -CAfile "$OUT/root-cert.pem" -untrusted "$OUT/ca-cert.pem" "$d/cert.pem" >&2
    done
    exit 0
fi

# ---------------------------------------------------------------- --expired
if [ "$MODE" = expired ]; then
    require_ca
    name="$1"
    d="$OUT/expired/$name"
    mkdir -p "$d"
    ca="$OUT/.ca"                     # throwaway minimal CA database
    rm -rf "$ca"; mkdir -p "$ca/new"
    : >"$ca/index.txt"
    echo "unique_subject = no" >"$ca/index.txt.attr"
    cat >"$ca/ca.cnf" <<EOF
[ ca ]
default_ca = expired_ca
[ expired_ca ]
dir            = $ca
database       = $ca/index.txt
new_certs_dir  = $ca/new
rand_serial    = yes
certificate    = $OUT/ca-cert.pem
private_key    = $OUT/ca-key.pem
default_md     = sha256
policy         = policy_any
copy_extensions = none
email_in_dn    = no
[ policy_any ]
organizationName = optional
commonName       = supplied
EOF
    cat "$TMP/ext.cnf" >>"$ca/ca.cnf"
    start="$(date -u -d '2 days ago' +%Y%m%d%H%M%SZ)"
    end="$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)"
    log "issuing EXPIRED leaf for $name (valid $start .. $end) -> $d"
    genkey "$d/key.pem"
    make_csr "$d/key.pem" "$name" "$TMP/$name.csr"
    LEAF_URI="$(spiffe_id "$name")" LEAF_DNS="$name" \
        openssl ca -batch -notext -config "$ca/ca.cnf" -extensions v3_leaf \
        -startdate "$start" -enddate "$end" -in "$TMP/$name.csr" -out "$d/cert.pem" 2>"$TMP/ca.log" \
        || { cat "$TMP/ca.log" >&2; die "openssl ca failed"; }
    chmod 644 "$d/cert.pem"
    assemble_chain "$d" "$OUT/ca-cert.pem"
    # The chain itself is fine; only the time check must fail, and it must fail as "expired".
    verify_ok "$OUT/root-cert.pem" "$OUT/ca-cert.pem" "$d/cert.pem" -no_check_time \
        || die "expired leaf does not chain to the root"
    if msg="$(openssl verify -CAfile "$OUT/root-cert.pem" -untrusted "$OUT/ca-cert.pem" "$d/cert.pem" 2>&1)"; then
        die "expired leaf unexpectedly verifies"
    fi
    echo "$msg" | grep -q "certificate has expired" || die "expected 'certificate has expired', got: $msg"
    echo "$d/cert.pem: expired as intended ($(openssl x509 -in "$d/cert.pem" -noout -enddate))" >&2
    exit 0
fi

# ---------------------------------------------------------------- --foreign
if [ "$MODE" = foreign ]; then
    name="$1"
    f="$OUT/foreign"
    mkdir -p "$f"
    make_root "$f" "Foreign Test Root CA"
    d="$f/$name"
    if ! { [ -s "$d/cert.pem" ] && [ -s "$d/key.pem" ] && key_matches "$d/cert.pem" "$d/key.pem" \
           && has_san "$d/cert.pem" "$name" && verify_ok "$f/root-cert.pem" "" "$d/cert.pem"; }; then
        log "issuing FOREIGN leaf for $name ($(spiffe_id "$name")) -> $d"
        write_leaf_files "$d" "$name" "$f/root-cert.pem" "$f/root-key.pem"
    fi
    assemble_chain "$d"           # leaf only: the foreign root is the trust anchor
    verify_ok "$f/root-cert.pem" "" "$d/cert.pem" || die "foreign leaf does not verify against the foreign root"
    if [ -s "$OUT/root-cert.pem" ]; then
        inter=()
        [ -s "$OUT/ca-cert.pem" ] && inter=(-untrusted "$OUT/ca-cert.pem")
        if openssl verify -CAfile "$OUT/root-cert.pem" "${inter[@]}" "$d/cert.pem" >/dev/null 2>&1; then
            die "foreign leaf unexpectedly verifies against $OUT/root-cert.pem"
        fi
    fi
    echo "$d/cert.pem: OK against $f/root-cert.pem, rejected by $OUT/root-cert.pem" >&2
    exit 0
fi
