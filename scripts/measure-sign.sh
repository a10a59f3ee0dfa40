#!/usr/bin/env bash
# Median wall time of an attested `notation sign` (attested-kv plugin: TPM evidence, MAA, token
# verification, Key Vault) next to a plain local-key `notation sign`, same registry, same image,
# on the local stack. Usage: scripts/measure-sign.sh [RUNS] (default 9). Needs make build tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PATH"
RUNS="${1:-9}"
STATE="$(mktemp -d /tmp/attested-kv-measure.XXXXXX)"
WORK="$(mktemp -d)"
trap 'attest-bootstrap local down --state "$STATE" >/dev/null 2>&1 || true; rm -rf "$WORK" "$STATE"' EXIT
attest-bootstrap local up --state "$STATE" 2>/dev/null
eval "$(attest-bootstrap local env --state "$STATE")"
echo measure > "$WORK/app.txt"
(cd "$WORK" && oras push "$ATTEST_REGISTRY/measure:v1" app.txt >/dev/null)
IMAGE="$ATTEST_REGISTRY/measure@$(oras resolve "$ATTEST_REGISTRY/measure:v1")"
notation cert generate-test plain >/dev/null
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
time_ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
for key in attested-local plain; do
  for _ in $(seq "$RUNS"); do time_ms notation sign --key "$key" "$IMAGE"; done | median | xargs printf "%-15s median %s ms over $RUNS runs\n" "$key"
done
