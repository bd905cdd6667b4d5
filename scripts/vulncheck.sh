#!/usr/bin/env bash
# govulncheck, offline: the vulnerability database is the golang.org/x/vulndb
# module from the Go module proxy (its data/osv directory). The scan uses the
# release toolchain (Go 1.27.3): the machine's Go 1.26.8 has standard-library
# vulnerabilities fixed there, and release images are built with it
# (Dockerfile). Development and tests run on either.
set -euo pipefail
cd "$(dirname "$0")/.."
VULN_VERSION=v1.9.0
VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018
export GOTOOLCHAIN="${RELEASE_GOTOOLCHAIN:-go1.27.3}"
bin="${GOVULNCHECK_BIN:-$(go env GOPATH)/bin}"
if [ ! -x "$bin/govulncheck" ]; then
	GOBIN="$bin" go install "golang.org/x/vuln/cmd/govulncheck@$VULN_VERSION"
fi
db=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$db/data/osv" ] || { echo "vulndb not found at $db" >&2; exit 1; }
"$bin/govulncheck" -db "file://$db/data/osv" ./...
