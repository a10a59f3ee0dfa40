#!/usr/bin/env bash
# The whole chain on the local stack, as a user would run it. Each step prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/bin"
export PATH="$BIN:$PATH"
STATE="${ATTEST_DEMO_STATE:-$(mktemp -d /tmp/attested-kv-demo.XXXXXX)}"
WORK="$(mktemp -d /tmp/attested-kv-demo-work.XXXXXX)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { attest-bootstrap local down --state "$STATE" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

step "start the local stack (MAA emulator + TPM simulator provisioned like an Azure vTPM)"
attest-bootstrap local up --state "$STATE"
eval "$(attest-bootstrap local env --state "$STATE")"
attest-bootstrap local status --state "$STATE"

NONCE="demo-$(date +%s)"
step "fetch a token from the TPM's evidence, bound to nonce $NONCE"
oras-attest token fetch --nonce "$NONCE" --out "$WORK/token.jwt"

step "verify it: signature by the instance's keys, issuer, lifetime, age, nonce"
oras-attest token verify "$WORK/token.jwt" --nonce "$NONCE"

step "the decoded claims"
oras-attest token show "$WORK/token.jwt" -o json | head -n 60

step "refused: the same token with another nonce"
if oras-attest token verify "$WORK/token.jwt" --nonce "other-$NONCE"; then echo "UNEXPECTED: accepted"; exit 1; fi

step "refused: one signature character flipped"
python3 - "$WORK/token.jwt" "$WORK/forged.jwt" <<'PY' 2>/dev/null || awk '{n=length($0); c=substr($0,n-5,1); r=(c=="A")?"B":"A"; print substr($0,1,n-6) r substr($0,n-4)}' "$WORK/token.jwt" > "$WORK/forged.jwt"
import sys
t = open(sys.argv[1]).read().strip()
i = len(t) - 6
open(sys.argv[2], "w").write(t[:i] + ("B" if t[i] == "A" else "A") + t[i+1:] + "\n")
PY
if oras-attest token verify "$WORK/forged.jwt" --nonce "$NONCE"; then echo "UNEXPECTED: accepted"; exit 1; fi

step "refused: the TPM is unavailable, so no token is issued"
attest-bootstrap local tpm stop --state "$STATE"
if oras-attest token fetch --nonce "$NONCE" --timeout 20s --out "$WORK/none.jwt"; then echo "UNEXPECTED: token issued"; exit 1; fi
attest-bootstrap local tpm start --state "$STATE"

step "stop the stack"
attest-bootstrap local down --state "$STATE"
echo
echo "demo finished: token issued and verified; forged, re-bound and TPM-less attempts refused"
