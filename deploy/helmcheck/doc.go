// Package helmcheck holds the tests of the Helm chart in deploy/helm/omicsq; it has no
// library code. They lint the chart with every ci/ values file, render it with the default,
// full and variant values and decode every object strictly into its k8s.io/api type (or a
// local struct for custom resources), check the restricted Pod Security profile, the grace
// period against the drain timeout, that no ConfigMap carries secret material, that invalid
// values are rejected, that the PrometheusRule carries every alert of the rules file, and that
// the chart's settings are ones the worker knows, with the worker's defaults.
//
// Tests that need helm skip unless it is found ($HELM, else helm on PATH);
// scripts/check-chart.sh installs a pinned helm and runs them all:
//
//	scripts/check-chart.sh
//	HELM=/path/to/helm go test ./deploy/helmcheck/
package helmcheck
