#!/usr/bin/env bash
# make test-unprivileged (part of make test): the tests whose check only a user without root's
# privileges can see, run as such a user when make test runs as root, as CI does (.ci/run installs
# Debian packages). As root they skip, since root reads a file of mode 0000 and writes into a
# read-only directory; so here their test binaries are built as root and the tests run as
# nobody (uid and gid 65534, no supplementary groups: setpriv, util-linux), each in a directory of
# its own holding a copy of the package's testdata (the checkout may be in a home directory that
# user cannot read), with a HOME and TMPDIR that user owns. The run fails unless each named test
# ran and passed: a skip fails it too.
#
# Run by any other user it does nothing: go test ran these tests already.
set -euo pipefail
cd "$(dirname "$0")/.."
GO="${GO:-go}"
UNPRIVILEGED_UID="${UNPRIVILEGED_UID:-65534}"
UNPRIVILEGED_GID="${UNPRIVILEGED_GID:-65534}"

# package | -test.run pattern | the tests, as -test.v names them, that must pass (space-separated)
TESTS=(
  # The message a build user meets on the kernel's root-only TCG event log.
  "./internal/tpm|^TestEventLogUnreadable\$|TestEventLogUnreadable/permission_denied TestEventLogUnreadable/a_directory"
  # A vault whose state file cannot be written answers 500 and undoes the change.
  "./internal/emulator/keyvault|^TestStateWriteFailure\$|TestStateWriteFailure/read-only_directory TestStateWriteFailure/name_taken_by_a_directory"
  # Another user's process is alive (kill answers EPERM), so that local down and env check
  # whose it is instead of taking the stack for stopped.
  "./internal/localstack|^TestAliveOtherUsersProcess\$|TestAliveOtherUsersProcess"
  # Its root-only case skips for this user: the subtest, not the test (a Skip of the parent test
  # from within a subtest fails the run).
  "./internal/token|^TestStoreOwner\$|TestStoreOwner TestStoreOwner/own_and_closed TestStoreOwner/writable_by_others"
)

if [ "$(id -u)" != 0 ]; then
  echo "test-unprivileged: not root (uid $(id -u)): go test ran these tests already"
  exit 0
fi
if ! command -v setpriv >/dev/null 2>&1; then
  echo "test-unprivileged: setpriv (util-linux) is needed to run tests as uid $UNPRIVILEGED_UID" >&2
  exit 1
fi
as_user() { setpriv --reuid="$UNPRIVILEGED_UID" --regid="$UNPRIVILEGED_GID" --clear-groups -- "$@"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/attested-kv-unprivileged.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"
if ! as_user test -x "$WORK"; then
  echo "test-unprivileged: uid $UNPRIVILEGED_UID cannot reach $WORK: set TMPDIR to a directory every user can traverse" >&2
  exit 1
fi

# One go command builds every test binary (in parallel), as $WORK/bin/<package name>.test.
pkgs=()
for entry in "${TESTS[@]}"; do
  pkgs+=("${entry%%|*}")
done
mkdir "$WORK/bin"
"$GO" test -c -race -o "$WORK/bin/" "${pkgs[@]}"
chmod -R a+rX "$WORK/bin"

failed=0
i=0
for entry in "${TESTS[@]}"; do
  IFS='|' read -r pkg pattern want <<<"$entry"
  i=$((i + 1))
  dir="$WORK/$i"
  mkdir -p "$dir/run" "$dir/home" "$dir/tmp"
  bin="$WORK/bin/$(basename "$pkg").test"
  if [ -d "$pkg/testdata" ]; then
    cp -R "$pkg/testdata" "$dir/run/"
  fi
  chmod -R a+rX "$dir"
  chown "$UNPRIVILEGED_UID:$UNPRIVILEGED_GID" "$dir/home" "$dir/tmp"
  chmod 0700 "$dir/home" "$dir/tmp"

  echo "test-unprivileged: $pkg -test.run '$pattern' as uid $UNPRIVILEGED_UID"
  status=0
  (cd "$dir/run" && as_user env -i PATH="$PATH" HOME="$dir/home" TMPDIR="$dir/tmp" \
    "$bin" -test.v -test.count=1 -test.run "$pattern") >"$dir/out" 2>&1 || status=$?
  grep -E -- '^ *(=== RUN|--- (PASS|FAIL|SKIP)|[a-z_]+_test\.go:[0-9]+: )' "$dir/out" || true
  problems=()
  [ "$status" = 0 ] || problems+=("the test binary exited with status $status")
  for name in $want; do
    if grep -qF -- "--- SKIP: $name (" "$dir/out"; then
      problems+=("$name was skipped")
    elif ! grep -qF -- "--- PASS: $name (" "$dir/out"; then
      problems+=("$name did not pass")
    fi
  done
  if [ ${#problems[@]} -gt 0 ]; then
    failed=1
    echo "test-unprivileged: $pkg FAILED as uid $UNPRIVILEGED_UID:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    echo "--- output of the test binary:" >&2
    cat "$dir/out" >&2
  fi
done
if [ "$failed" != 0 ]; then
  exit 1
fi
echo "test-unprivileged: ok"
