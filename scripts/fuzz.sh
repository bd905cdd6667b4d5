#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a bounded budget each: a time
# (10s) or, as CI does, a number of executions (30000x). A count is steadier
# on a loaded machine, and a time budget can end inside a minimisation and
# fail the run with "context deadline exceeded" although nothing failed.
# Seed corpora live in each package's testdata/fuzz/; a crasher found here is
# written there by go test and must become a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-10s}"
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz $pkg $target ($budget)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$budget" -fuzzminimizetime 200x "$pkg"
	done
done
