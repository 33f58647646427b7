#!/usr/bin/env bash
# Release build: static meshd binaries for linux/amd64 and linux/arm64
# (CGO_ENABLED=0, -trimpath, the version stamped in `meshd version`) and a
# .deb per architecture with the systemd units of deploy/systemd.
#
#   release/build.sh [VERSION]     # default: git describe --tags --always --dirty
#   ARCHS=amd64 release/build.sh   # one architecture
#
# Output in dist/ (or $DIST). The script fails when a binary is over the
# size budget (SIZE_BUDGET_MIB, 36 MiB: what the README promises).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo devel)}
version=${version#v}
# A Debian version starts with a digit: an untagged tree (git describe gives
# a commit, "d0280d7-dirty") becomes 0~git.d0280d7-dirty, below any release.
debversion=$version
[[ $debversion =~ ^[0-9] ]] || debversion="0~git.$debversion"
dist=${DIST:-dist}
archs=${ARCHS:-amd64 arm64}
budget=${SIZE_BUDGET_MIB:-36}
if ! [[ $version =~ ^[0-9A-Za-z.+~-]+$ ]]; then
  echo "release: version $version: want letters, digits and . + ~ - only (a Debian version)" >&2
  exit 2
fi
mkdir -p "$dist"
for arch in $archs; do
  bin=$dist/meshd-$version-linux-$arch
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X main.version=$version" -o "$bin" .
  size=$(stat -c %s "$bin")
  mib=$(( (size + 1048575) / 1048576 ))
  echo "$bin: $size bytes (${mib} MiB, budget ${budget} MiB)"
  if (( size > budget * 1048576 )); then
    echo "release: $bin is over the size budget of $budget MiB" >&2
    exit 1
  fi
  if command -v dpkg-deb >/dev/null; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    install -D -m 0755 "$bin" "$root/usr/bin/meshd"
    for u in deploy/systemd/*.service; do
      install -D -m 0644 "$u" "$root/lib/systemd/system/$(basename "$u")"
    done
    install -D -m 0644 deploy/README.md "$root/usr/share/doc/meshd/README.deploy.md"
    mkdir -p "$root/DEBIAN"
    cat > "$root/DEBIAN/control" <<CONTROL
Package: meshd
Version: $debversion
Architecture: $arch
Maintainer: meshd maintainers <maintainers@meshd.invalid>
Section: net
Priority: optional
Description: service mesh in one static binary
 Edge, ingress gateway or sidecar: mTLS with SPIFFE identities, gossip
 catalog, anycast edge, HTTP cache, traffic policy. No control plane.
CONTROL
    dpkg-deb --root-owner-group --build "$root" "$dist/meshd_${version}_$arch.deb" >/dev/null
    echo "$dist/meshd_${version}_$arch.deb"
    rm -rf "$root"
    trap - EXIT
  fi
done
