#!/usr/bin/env bash
# Builds spire-server and spire-agent (the SPIRE release that meshd's
# --spiffe-socket is tested against) into a cache directory, once per
# machine: e2e_spire_test.go finds them there. SPIRE's main module only
# installs through a module of our own (go get -tool, then go install), so the
# build runs in a throwaway module in a temp dir, never in meshd's go.mod.
# Prints the directory holding both binaries on its last line. Without
# root: MESHD_SPIRE_CACHE=$HOME/.cache/meshd-spire .ci/spire.sh, then run the
# test with MESHD_SPIRE_DIR set to the directory it printed.
set -euo pipefail
version="${SPIRE_VERSION:-v1.13.3}"
dir="${MESHD_SPIRE_CACHE:-/var/cache/meshd-spire}/$version"
if [ -x "$dir/spire-server" ] && [ -x "$dir/spire-agent" ]; then
  echo "spire $version: cached in $dir"
  echo "$dir"
  exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
(
  cd "$work"
  go mod init spire-build >/dev/null 2>&1
  go get -tool "github.com/spiffe/spire/cmd/spire-server@$version"
  go get -tool "github.com/spiffe/spire/cmd/spire-agent@$version"
  # The server's sqlite datastore is cgo (mattn/go-sqlite3).
  CGO_ENABLED=1 GOBIN="$work/bin" go install -trimpath \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
)
# Moved in only once both built, so a half-done build is never taken as cached.
mv "$work/bin/spire-server" "$work/bin/spire-agent" "$dir/"
echo "spire $version: built in $(( $(date +%s) - start ))s into $dir"
echo "$dir"
