package helmcheck

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// workerSettings builds ./cmd/worker and parses `worker --help` into environment variable
// name -> default value ("" when the flag has none). It skips when the worker does not build:
// that failure belongs to the worker's own tests.
func workerSettings(t *testing.T) map[string]string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	bin := filepath.Join(t.TempDir(), "worker")
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/worker")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("cmd/worker does not build, cannot compare the chart with it: %v\n%s", err, out)
	}
	// --help exits non-zero or zero depending on the flag package; only the text matters.
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	// Each flag prints "  -name type\n    \tusage (env NAME) (default X)".
	re := regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)\)(?: \(default (.*)\))?\s*$`)
	settings := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		def := m[2]
		if u, err := strconv.Unquote(def); err == nil {
			def = u
		}
		settings[m[1]] = def
	}
	if len(settings) < 20 {
		t.Fatalf("parsed only %d settings from worker --help:\n%s", len(settings), out)
	}
	return settings
}

// sameValue compares a chart value with a worker default as the worker would parse them.
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	if (a == "" && b == "0s") || (a == "0s" && b == "") {
		return true // a zero duration, as the worker's table and the chart spell it
	}
	if da, err := time.ParseDuration(a); err == nil {
		db, err := time.ParseDuration(b)
		return err == nil && da == db
	}
	if fa, err := strconv.ParseFloat(a, 64); err == nil {
		fb, err := strconv.ParseFloat(b, 64)
		return err == nil && fa == fb
	}
	if ba, err := strconv.ParseBool(a); err == nil {
		bb, err := strconv.ParseBool(b)
		return err == nil && ba == bb
	}
	return false
}

// chartDefaultsDiffer lists the settings whose chart default is deliberately not the
// worker's, and why.
var chartDefaultsDiffer = map[string]string{
	"NATS_URL":               "required in Kubernetes; empty would start an embedded server",
	"METRICS_ADDR":           "must listen on the pod IP for probes and Prometheus, not loopback",
	"LOG_FORMAT":             "json for log collectors",
	"OMICSQ_STREAM_REPLICAS": "3: a Kubernetes deployment talks to a NATS cluster; 1 only suits the embedded server",
}

// sdkEnv are variables the Tencent Cloud SDK (or the TKE webhook) defines, not worker flags.
var sdkEnv = map[string]bool{
	"TENCENTCLOUD_SECRET_ID": true, "TENCENTCLOUD_SECRET_KEY": true, "TENCENTCLOUD_SESSION_TOKEN": true,
	"TKE_REGION": true, "TKE_PROVIDER_ID": true, "TKE_WEB_IDENTITY_TOKEN_FILE": true, "TKE_ROLE_ARN": true,
}

// TestSettingsMatchWorker: every variable the chart sets is one the worker (or the SDK)
// reads, and the chart's defaults are the worker's, except the documented differences.
func TestSettingsMatchWorker(t *testing.T) {
	helmBinary(t)
	worker := workerSettings(t)
	for _, c := range renderCases()[:2] { // default and full
		t.Run(c.name, func(t *testing.T) {
			objs := render(t, c.files, c.sets...)
			dep := workerDeployment(t, objs)
			var settings *corev1.ConfigMap
			for _, cm := range find[*corev1.ConfigMap](objs) {
				if cm.Name == dep.Name {
					settings = cm
				}
			}
			if settings == nil {
				t.Fatal("no settings ConfigMap")
			}
			for k := range settings.Data {
				if _, ok := worker[k]; !ok {
					t.Errorf("ConfigMap sets %s, which worker --help does not list", k)
				}
			}
			for _, e := range workerContainer(t, dep).Env {
				_, known := worker[e.Name]
				if !known && !sdkEnv[e.Name] && !isExtraEnv(e.Name) {
					t.Errorf("Deployment sets env %s, which neither the worker nor the SDK reads", e.Name)
				}
			}
			if c.name != "default" {
				return
			}
			for k, v := range settings.Data {
				def, ok := worker[k]
				if !ok {
					continue
				}
				if _, differs := chartDefaultsDiffer[k]; differs {
					continue
				}
				if !sameValue(v, def) {
					t.Errorf("chart default %s=%q, worker default %q: keep them equal or document the difference in chartDefaultsDiffer", k, v, def)
				}
			}
		})
	}
}

// isExtraEnv: the names full-values.yaml adds through extraEnv.
func isExtraEnv(name string) bool { return name == "HTTPS_PROXY" || name == "NO_PROXY" }

// TestConfigReachesEverySetting: every worker setting is reachable from values (the config
// map), and none of the secret ones is accepted there.
func TestConfigReachesEverySetting(t *testing.T) {
	helmBinary(t)
	worker := workerSettings(t)
	var names []string
	for k := range worker {
		names = append(names, k)
	}
	sort.Strings(names)
	var sets []string
	for _, k := range names {
		if secretKeyName.MatchString(k) {
			continue // NATS_PASSWORD, NATS_TOKEN: Secret-backed values only
		}
		if k == "NATS_URL" {
			continue
		}
		v := worker[k]
		if v == "" {
			v = "x"
		}
		sets = append(sets, "config."+k+"="+strings.NewReplacer(",", `\,`, ".", `\.`).Replace(v))
	}
	// Rendering only: the values need not make sense together.
	out, err := runHelm(t, append(templateArgs(chartDir, []string{ciValues("default-values.yaml")}, nil), append(setFlags(sets), "--show-only", "templates/configmap.yaml")...)...)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := json.Unmarshal(js, &cm); err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		k := strings.TrimPrefix(strings.SplitN(s, "=", 2)[0], "config.")
		if _, ok := cm.Data[k]; !ok {
			t.Errorf("config.%s did not reach the ConfigMap", k)
		}
	}
	for _, k := range []string{"NATS_PASSWORD", "NATS_TOKEN", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_SESSION_TOKEN"} {
		if _, err := runHelm(t, templateArgs(chartDir, []string{ciValues("default-values.yaml")}, []string{"config." + k + "=x"})...); err == nil {
			t.Errorf("config.%s was accepted into the ConfigMap", k)
		}
	}
}

func setFlags(sets []string) []string {
	var out []string
	for _, s := range sets {
		out = append(out, "--set", s)
	}
	return out
}

// TestSchemaCoversValues: values.yaml and values.schema.json describe the same keys. Helm
// already rejects a values.yaml key the schema closes over; this also catches schema
// properties that values.yaml forgot to document.
func TestSchemaCoversValues(t *testing.T) {
	rawValues, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(rawValues, &values); err != nil {
		t.Fatal(err)
	}
	rawSchema, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(rawSchema, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	if schema["$schema"] != "http://json-schema.org/draft-07/schema#" {
		t.Errorf("values.schema.json: $schema %v, want draft-07", schema["$schema"])
	}
	var walk func(path string, v map[string]any, s map[string]any)
	walk = func(path string, v map[string]any, s map[string]any) {
		props, _ := s["properties"].(map[string]any)
		closed := s["additionalProperties"] == false
		if props == nil {
			return
		}
		for k, val := range v {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if closed {
					t.Errorf("values.yaml %s%s is not in the schema", path, k)
				}
				continue
			}
			if sub, ok := val.(map[string]any); ok {
				walk(path+k+".", sub, ps)
			}
		}
		if !closed {
			return
		}
		for k := range props {
			if _, ok := v[k]; !ok && !(path == "" && k == "global") {
				t.Errorf("schema property %s%s has no default in values.yaml", path, k)
			}
		}
	}
	walk("", values, schema)
}
