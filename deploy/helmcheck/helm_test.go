package helmcheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const (
	// kubeVersion is passed to helm lint/template. Helm built with `go install` (as
	// scripts/check-chart.sh does) lacks the release build's ldflags and would otherwise
	// assume Kubernetes v1.20, below the chart's kubeVersion.
	kubeVersion = "1.31.0"
	releaseName = "rel"
	namespace   = "omicsq"
)

var (
	repoRoot = filepath.Join("..", "..")
	chartDir = filepath.Join("..", "helm", "omicsq")
)

// helmBinary returns the helm to use: $HELM, else helm on PATH; it skips the test otherwise.
func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	t.Skip("helm not found: set HELM or put helm on PATH (scripts/check-chart.sh installs helm v3.22.0 and runs these tests)")
	return ""
}

// runHelm runs helm with args and returns stdout, or the error with stderr.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Keep helm away from any user configuration or cluster.
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "kubeconfig"),
	)
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// templateArgs builds `helm template` arguments for chart with values files and --set pairs.
func templateArgs(chart string, files []string, sets []string) []string {
	args := []string{"template", releaseName, chart, "--namespace", namespace, "--kube-version", kubeVersion}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return args
}

// object is one rendered document.
type object struct {
	source string // the template that rendered it
	json   []byte
	meta   metav1.TypeMeta
	name   string
	value  any // the strictly decoded typed object
}

func (o object) key() string { return o.meta.APIVersion + "/" + o.meta.Kind }

// types maps apiVersion/kind to a new typed value; anything else is rejected.
var types = map[string]func() any{
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                       func() any { return &corev1.ServiceAccount{} },
	"v1/Pod":                                  func() any { return &corev1.Pod{} },
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return &networkingv1.NetworkPolicy{} },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &serviceMonitor{} },
	"monitoring.coreos.com/v1/PodMonitor":     func() any { return &podMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &prometheusRule{} },
	"keda.sh/v1alpha1/ScaledObject":           func() any { return &scaledObject{} },
	"keda.sh/v1alpha1/TriggerAuthentication":  func() any { return &triggerAuthentication{} },
	"jetstream.nats.io/v1beta2/Stream":        func() any { return &nackStream{} },
	"jetstream.nats.io/v1beta2/Consumer":      func() any { return &nackConsumer{} },
	"jetstream.nats.io/v1beta2/KeyValue":      func() any { return &nackKeyValue{} },
}

var (
	docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)
	sourceLine   = regexp.MustCompile(`(?m)^# Source: (\S+)`)
)

// decodeStrict decodes JSON into v, failing on unknown fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

// parseManifests splits helm output into documents and decodes each strictly into its type.
func parseManifests(t *testing.T, out string) []object {
	t.Helper()
	var objs []object
	for _, doc := range docSeparator.Split(out, -1) {
		src := ""
		if m := sourceLine.FindStringSubmatch(doc); m != nil {
			src = m[1]
		}
		// YAMLToJSONStrict also rejects duplicate keys, which the API server would
		// silently collapse.
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s: not valid YAML: %v\n%s", src, err, doc)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // comments only
		}
		var head struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(js, &head); err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		o := object{source: src, json: js, meta: head.TypeMeta, name: head.Metadata.Name}
		newValue, ok := types[o.key()]
		if !ok {
			t.Errorf("%s: %s %q has no registered type; add it to types (and check its fields)", src, o.key(), o.name)
			continue
		}
		o.value = newValue()
		if err := decodeStrict(js, o.value); err != nil {
			t.Errorf("%s: %s %q does not decode strictly: %v", src, o.key(), o.name, err)
			continue
		}
		objs = append(objs, o)
	}
	return objs
}

// render runs helm template and returns the strictly decoded objects.
func render(t *testing.T, files []string, sets ...string) []object {
	t.Helper()
	out, err := runHelm(t, templateArgs(chartDir, files, sets)...)
	if err != nil {
		t.Fatal(err)
	}
	return parseManifests(t, out)
}

// find returns the objects of one kind.
func find[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the single object of one kind, failing if there is not exactly one.
func one[T any](t *testing.T, objs []object) T {
	t.Helper()
	all := find[T](objs)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(all))
	}
	return all[0]
}

func ciValues(name string) string { return filepath.Join(chartDir, "ci", name) }
