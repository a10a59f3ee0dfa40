#!/usr/bin/env bash
# The whole chain on the local stack, as a user would run it. Each step prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ATTEST_BIN:-$PWD/bin}"
export PATH="$BIN:$PATH"
STATE="${ATTEST_DEMO_STATE:-$(mktemp -d /tmp/attested-kv-demo.XXXXXX)}"
WORK="$(mktemp -d /tmp/attested-kv-demo-work.XXXXXX)"
# Bold step titles on a terminal only: no escape codes in a log or a pipe.
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
refused() { echo "-> refused, as it must be"; }
# The state directory holds private keys and the registry's data: removed unless the caller chose it.
cleanup() {
  attest-bootstrap local down --state "$STATE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ -z "${ATTEST_DEMO_STATE:-}" ]; then rm -rf "$STATE"; fi
}
trap cleanup EXIT

step "start the local stack: MAA, Entra ID and Key Vault emulators, a TPM simulator provisioned like an Azure vTPM, a registry"
attest-bootstrap local up --state "$STATE"
eval "$(attest-bootstrap local env --state "$STATE")"
attest-bootstrap local status --state "$STATE"

NONCE="demo-$(date +%s)"
step "fetch a token from the TPM's evidence, bound to nonce $NONCE"
# The stack's TPM key cache, which the plugin uses too, rather than the user's cache directory, so
# that the demo leaves nothing behind (token fetch has a flag for it, no environment variable).
oras-attest token fetch --nonce "$NONCE" --out "$WORK/token.jwt" --key-cache "$STATE/tpm/key-cache"

step "verify it: signature by the instance's keys, issuer, lifetime, age, nonce"
oras-attest token verify "$WORK/token.jwt" --nonce "$NONCE"

step "the decoded claims (secure boot as measured by the TPM's event log)"
oras-attest token show "$WORK/token.jwt" -o json | grep -E '"(secureboot|x-ms-attestation-type|x-ms-azurevm-dbvalidated|nonce)"'

step "refused: the same token with another nonce"
if oras-attest token verify "$WORK/token.jwt" --nonce "other-$NONCE" >/dev/null; then echo "UNEXPECTED: accepted"; exit 1; fi; refused

step "refused: one signature character flipped"
t="$(cat "$WORK/token.jwt")"; i=$(( ${#t} - 6 )); c="${t:$i:1}"; [ "$c" = A ] && r=B || r=A
printf '%s%s%s\n' "${t:0:$i}" "$r" "${t:$((i+1))}" > "$WORK/forged.jwt"
if oras-attest token verify "$WORK/forged.jwt" --nonce "$NONCE" >/dev/null; then echo "UNEXPECTED: accepted"; exit 1; fi; refused

step "push an image to the local registry ($ATTEST_REGISTRY)"
echo "hello from an attested build" > "$WORK/app.txt"
(cd "$WORK" && oras push "$ATTEST_REGISTRY/app:v1" app.txt >/dev/null)
DIGEST="$(oras resolve "$ATTEST_REGISTRY/app:v1")"
IMAGE="$ATTEST_REGISTRY/app@$DIGEST"
echo "$IMAGE"

step "notation sign through the attested-kv plugin: attest, verify the token and the claim rules, then sign in Key Vault"
notation sign --key attested-local "$IMAGE"
notation verify "$IMAGE"

step "attach the token to the image as an OCI referrer; oras discover shows the signature and the token"
oras-attest attach "$IMAGE"
oras discover "$IMAGE"

step "verify before deployment: signature, token referrer, issuer, freshness at signing, binding to image and key, claim rules"
oras-attest verify "$IMAGE"

# The baseline admits a token of any Trusted Launch VM that asks the instance (verify says so
# above); a rule on the VM id admits the build VMs only. The stack's TPM is one VM: its id is in
# the token this machine fetched and verified above (on Azure: az vm show --query vmId).
VMID="$(oras-attest token show "$WORK/token.jwt" -o json | sed -n 's/^ *"x-ms-azurevm-vmid": *"\([0-9A-Fa-f-]*\)",*$/\1/p')"
[ -n "$VMID" ] || { echo "no x-ms-azurevm-vmid in the token"; exit 1; }
oras-attest rules pin-vm --vm-id "$VMID" --out "$WORK/this-vm.cel"
oras-attest rules pin-vm --vm-id 7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b --out "$WORK/other-vm.cel"

step "pin the build VM: the baseline rules and one on this VM's id ($VMID)"
oras-attest verify "$IMAGE" --rules "$WORK/this-vm.cel"

step "refused: signing where the rules name another build VM (the plugin's rules, before Key Vault)"
if notation sign --plugin-config rules="$WORK/other-vm.cel" "$IMAGE"; then echo "UNEXPECTED: signed"; exit 1; fi; refused

step "refused: deploying where the rules name another build VM"
if oras-attest verify "$IMAGE" --rules "$WORK/other-vm.cel"; then echo "UNEXPECTED: verified"; exit 1; fi; refused

step "refused: signing while the TPM is unavailable (Key Vault is never called)"
attest-bootstrap local tpm stop --state "$STATE"
if notation sign "$IMAGE"; then echo "UNEXPECTED: signed"; exit 1; fi; refused
attest-bootstrap local tpm start --state "$STATE"

step "refused: deploying an image signed without its token attached"
(cd "$WORK" && echo other > other.txt && oras push "$ATTEST_REGISTRY/other:v1" other.txt >/dev/null)
OTHER="$ATTEST_REGISTRY/other@$(oras resolve "$ATTEST_REGISTRY/other:v1")"
notation sign "$OTHER" >/dev/null
if oras-attest verify "$OTHER"; then echo "UNEXPECTED: verified"; exit 1; fi; refused

step "stop the stack"
attest-bootstrap local down --state "$STATE"
echo
echo "demo finished: attested signing and verification passed, with the build VM pinned too; forged, re-bound, other-VM, TPM-less and token-less attempts refused"
