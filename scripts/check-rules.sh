#!/usr/bin/env bash
# Checks omicsq's Prometheus alert rules and dashboard queries with promtool:
#   - the rules file has no template braces (the Helm chart embeds it verbatim);
#   - promtool check rules: syntax and lint;
#   - promtool test rules: each alert fires, and stays quiet, when it should
#     (metrics/testdata/alerts.rules.test.yaml);
#   - every dashboard query parses (a Go test that needs promtool, forced to
#     run rather than skip here).
# Needs promtool on PATH (Debian: apt-get install prometheus) and go; it does
# not install anything.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rules="$root/deploy/helm/omicsq/files/alerts.rules.yaml"
tests="$root/metrics/testdata/alerts.rules.test.yaml"

if ! command -v promtool >/dev/null 2>&1; then
	echo "check-rules: promtool not found on PATH (Debian package: prometheus)" >&2
	exit 127
fi

if grep -n '{{' "$rules" >&2; then
	echo "check-rules: $rules contains '{{': Helm would try to render it" >&2
	exit 1
fi

promtool check rules "$rules"
promtool test rules "$tests"

cd "$root"
OMICSQ_REQUIRE_PROMTOOL=1 go test -count=1 -run '^TestDashboardQueriesParse$' ./metrics/
