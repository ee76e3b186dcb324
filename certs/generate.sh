#!/usr/bin/env bash
# Regenerates the example certificates in this folder: a CA, a server
# certificate for localhost / 127.0.0.1, and a client certificate, all
# ECDSA P-256 and valid for 100 years. Needs only `openssl` (1.1.1 or 3.x).
#
#   bash certs/generate.sh            # from the repository root
#
# The tests do not use these files: they make fresh certificates at test
# time (see tests/common/listeners.rs), so nothing in the suite can expire.
set -euo pipefail
cd "$(dirname "$0")"

days=36500
org="/O=roost examples"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# The CA: self-signed, may sign certificates and nothing else.
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days "$days" -sha256 \
    -subj "$org/CN=roost example CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -out "$tmp/$1.csr" -subj "$2"
    printf '%s\n' "$3" > "$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA ca.pem -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
        -extfile "$tmp/$1.ext" -out "$1.pem"
}

sign server "$org/CN=localhost" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

sign client "$org/CN=example-client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=email:example-client@example.invalid"

for c in ca server client; do
    openssl x509 -in "$c.pem" -noout -subject -enddate
done
