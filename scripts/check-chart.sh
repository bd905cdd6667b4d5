#!/usr/bin/env bash
# Validates the Helm chart deploy/helm/omicsq and the container image recipe:
#
#  - go test ./deploy/helmcheck/ with HELM set: helm lint --strict with every ci/ values file;
#    helm template with default, full and variant values, every object decoded strictly into
#    its k8s.io/api type (custom resources into local structs); restricted Pod Security fields;
#    grace period vs drain timeout; no secret material in ConfigMaps; the bad values in
#    deploy/helmcheck/testdata rejected; every alert of files/alerts.rules.yaml in the
#    PrometheusRule; the chart's settings checked against `worker --help`.
#  - scripts/check-image.sh: Dockerfile checks and the static build (no Docker engine needed).
#
# helm: $HELM if set, else helm v3.22.0 built once with `go install` into a cache directory
# ($OMICSQ_TOOLS_DIR, default ${XDG_CACHE_HOME:-~/.cache}/omicsq-tools; the first build takes a
# few minutes). A helm on PATH is not used, so every run checks with the same version.
#
# Usage: scripts/check-chart.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
helm_version="v3.22.0"

if [ -z "${HELM:-}" ]; then
	tools="${OMICSQ_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/omicsq-tools}/helm-$helm_version"
	HELM="$tools/helm"
	if [ ! -x "$HELM" ]; then
		echo "check-chart: installing helm $helm_version into $tools (go install; first build takes a few minutes)"
		mkdir -p "$tools"
		# Outside the module, so its go.mod plays no part; @version pins helm's own go.mod.
		(cd / && GOBIN="$tools" GOFLAGS="${GOFLAGS:-}" go install "helm.sh/helm/v3/cmd/helm@$helm_version")
	fi
fi
export HELM
echo "check-chart: helm $("$HELM" version --short 2>/dev/null || echo "at $HELM")"

go test -count=1 ./deploy/helmcheck/
scripts/check-image.sh
echo "check-chart: all checks passed"
