package helmcheck

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// TestLint runs helm lint --strict with every ci/ values file (chart-testing's must-pass set).
func TestLint(t *testing.T) {
	helmBinary(t)
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*.yaml values files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := runHelm(t, "lint", "--strict", "--kube-version", kubeVersion, "--namespace", namespace, chartDir, "-f", f); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// renderCase is one set of values to render and check.
type renderCase struct {
	name  string
	files []string
	sets  []string
}

func renderCases() []renderCase {
	def, full := ciValues("default-values.yaml"), ciValues("full-values.yaml")
	d := []string{def}
	return []renderCase{
		{name: "default", files: d},
		{name: "full", files: []string{full}},
		// The alternatives full-values cannot hold at the same time.
		{name: "hpa+podmonitor", files: d, sets: []string{"autoscaling.enabled=true", "autoscaling.targetMemoryUtilizationPercentage=80", "metrics.podMonitor.enabled=true", "metrics.podMonitor.additionalLabels.release=kps"}},
		{name: "keda-metadata", files: d, sets: []string{"keda.enabled=true", "keda.natsServerMonitoringEndpoint=nats-headless.nats.svc.cluster.local:8222", "keda.minReplicaCount=0", "keda.prometheusServerAddress=http://prometheus:9090"}},
		{name: "nats-user-password", files: d, sets: []string{"nats.auth.type=userPassword", "nats.auth.existingSecret=nats-user", "nats.tls.ca.configMapName=nats-ca"}},
		{name: "nats-token", files: d, sets: []string{"nats.auth.type=token", "nats.auth.existingSecret=nats-token"}},
		{name: "nats-nkey", files: d, sets: []string{"nats.auth.type=nkey", "nats.auth.existingSecret=nats-nkey", "nats.tls.clientCert.secretName=nats-client"}},
		{name: "secret-with-sts-token", files: d, sets: []string{"tencentcloud.credentials.sessionTokenKey=sessionToken"}},
		{name: "tke-webhook", files: d, sets: []string{"tencentcloud.credentials.source=workloadIdentity", "tencentcloud.credentials.workloadIdentity.roleArn=qcs::cam::uin/100000000001:roleName/omicsq"}},
		{name: "sandbox-no-credentials", files: d, sets: []string{"tencentcloud.credentials.source=none", "config.OMICSQ_SANDBOX=true", "config.TENCENTCLOUD_CREDENTIALS_FILE=/etc/tencentcloud/credentials", "service.enabled=false", "podDisruptionBudget.enabled=false", "serviceAccount.create=false", "serviceAccount.name=existing"}},
		{name: "nack-without-kv", files: d, sets: []string{"jetstream.provision=false", "nack.enabled=true", "nack.keyValues=false", "jetstream.streamReplicas=1"}},
		{name: "ipv6-and-overrides", files: d, sets: []string{"metrics.host=::", "fullnameOverride=omicsq-prod", "config.OMICSQ_CONSUMER=other-consumer", "keda.enabled=true", "keda.natsServerMonitoringEndpoint=nats:8222", "jetstream.lanes=false"}},
	}
}

// TestRender renders every case and checks the invariants every rendering must hold.
func TestRender(t *testing.T) {
	helmBinary(t)
	for _, c := range renderCases() {
		t.Run(c.name, func(t *testing.T) {
			objs := render(t, c.files, c.sets...)
			checkObjects(t, objs)
		})
	}
}

// TestRenderFeatures checks that the full values turn on what they claim, and the default
// values nothing that needs a cluster add-on.
func TestRenderFeatures(t *testing.T) {
	helmBinary(t)
	count := func(objs []object) map[string]int {
		m := map[string]int{}
		for _, o := range objs {
			m[o.meta.Kind]++
		}
		return m
	}
	def := count(render(t, []string{ciValues("default-values.yaml")}))
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "HorizontalPodAutoscaler", "Stream", "Consumer", "KeyValue", "TriggerAuthentication"} {
		if def[kind] != 0 {
			t.Errorf("default values render a %s: add-on features must be off by default", kind)
		}
	}
	full := count(render(t, []string{ciValues("full-values.yaml")}))
	want := map[string]int{
		"Deployment": 1, "Service": 1, "ServiceAccount": 1, "PodDisruptionBudget": 1, "Pod": 1,
		"ServiceMonitor": 1, "PrometheusRule": 1, "ScaledObject": 1, "TriggerAuthentication": 1,
		"ConfigMap": 3, // settings, dashboard, the extraObjects example
	}
	for kind, n := range want {
		if full[kind] != n {
			t.Errorf("full values: %d %s, want %d", full[kind], kind, n)
		}
	}
	// The NACK resources: at least the queue's and the run tracker's.
	// TestNACKMatchesProvision checks them one by one against the code, so a
	// bucket added there needs no count changed here.
	for kind, n := range map[string]int{"Stream": 5, "Consumer": 3, "KeyValue": 5} {
		if full[kind] < n {
			t.Errorf("full values: %d NACK %s, want at least %d", full[kind], kind, n)
		}
	}
	if full["HorizontalPodAutoscaler"] != 0 || full["PodMonitor"] != 0 {
		t.Errorf("full values: HPA/PodMonitor rendered next to KEDA/ServiceMonitor")
	}
}

// checkObjects holds the invariants of any rendering.
func checkObjects(t *testing.T, objs []object) {
	checkMetadata(t, objs)
	dep := workerDeployment(t, objs)
	pod := dep.Spec.Template
	checkRestricted(t, "Deployment "+dep.Name, &pod.Spec)
	c := workerContainer(t, dep)

	// The chart's own settings ConfigMap, consumed with envFrom.
	var settings *corev1.ConfigMap
	for _, cm := range find[*corev1.ConfigMap](objs) {
		if cm.Name == dep.Name {
			settings = cm
		}
		checkNoSecretMaterial(t, cm)
	}
	if settings == nil {
		t.Fatalf("no ConfigMap %q with the worker settings", dep.Name)
	}
	if len(c.EnvFrom) == 0 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != settings.Name {
		t.Errorf("worker container does not take its settings from ConfigMap %s with envFrom", settings.Name)
	}
	if settings.Data["NATS_URL"] == "" {
		t.Errorf("NATS_URL is empty: the worker would start an embedded server")
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(pod.Annotations["checksum/config"]) {
		t.Errorf("pod template lacks a checksum/config annotation, got %q", pod.Annotations["checksum/config"])
	}

	checkGracePeriod(t, dep, settings)
	checkEnv(t, c)
	checkProbesAndPort(t, c, settings)
	checkVolumes(t, &pod.Spec)

	// Autoscaled: the Deployment must not pin replicas.
	scaled := len(find[*autoscalingv2.HorizontalPodAutoscaler](objs))+len(find[*scaledObject](objs)) > 0
	if scaled && dep.Spec.Replicas != nil {
		t.Errorf("an autoscaler owns the replicas, but the Deployment sets replicas: %d", *dep.Spec.Replicas)
	}
	if !scaled && dep.Spec.Replicas == nil {
		t.Errorf("no autoscaler and no replicas")
	}
	if len(find[*autoscalingv2.HorizontalPodAutoscaler](objs)) > 0 && len(find[*scaledObject](objs)) > 0 {
		t.Errorf("both an HPA and a KEDA ScaledObject")
	}

	checkSelectors(t, objs, dep)
	checkAutoscalers(t, objs, dep, settings)
	checkMonitors(t, objs, dep)
	checkTestPod(t, objs, dep)
	checkNACK(t, objs, settings)
	checkServiceAccount(t, objs, dep)
}

func workerContainer(t *testing.T, dep *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i := range dep.Spec.Template.Spec.Containers {
		if dep.Spec.Template.Spec.Containers[i].Name == "worker" {
			return &dep.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("Deployment %s has no container named worker", dep.Name)
	return nil
}

// checkMetadata: valid names and labels, the standard labels, namespaces set.
func checkMetadata(t *testing.T, objs []object) {
	for _, o := range objs {
		var m struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := json.Unmarshal(o.json, &m); err != nil {
			t.Fatal(err)
		}
		md := m.Metadata
		for _, msg := range validation.IsDNS1123Subdomain(md.Name) {
			t.Errorf("%s %q: invalid name: %s", o.meta.Kind, md.Name, msg)
		}
		if o.meta.Kind == "ScaledObject" && len(md.Name) > 54 {
			t.Errorf("ScaledObject name %q is over KEDA's 54 characters", md.Name)
		}
		for k, v := range md.Labels {
			for _, msg := range validation.IsQualifiedName(k) {
				t.Errorf("%s %q: label key %q: %s", o.meta.Kind, md.Name, k, msg)
			}
			for _, msg := range validation.IsValidLabelValue(v) {
				t.Errorf("%s %q: label %s=%q: %s", o.meta.Kind, md.Name, k, v, msg)
			}
		}
		for k := range md.Annotations {
			for _, msg := range validation.IsQualifiedName(k) {
				t.Errorf("%s %q: annotation key %q: %s", o.meta.Kind, md.Name, k, msg)
			}
		}
		if strings.Contains(o.source, "extra-objects") {
			continue // the user's own objects
		}
		if md.Namespace == "" {
			t.Errorf("%s %q has no namespace", o.meta.Kind, md.Name)
		}
		for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version", "helm.sh/chart", "app.kubernetes.io/component"} {
			if md.Labels[l] == "" {
				t.Errorf("%s %q lacks label %s", o.meta.Kind, md.Name, l)
			}
		}
	}
}

// checkRestricted asserts the fields of the restricted Pod Security Standard
// (https://kubernetes.io/docs/concepts/security/pod-security-standards/), plus the chart's
// own choices: UID/GID 65532 and a read-only root filesystem.
func checkRestricted(t *testing.T, what string, spec *corev1.PodSpec) {
	bad := func(format string, a ...any) {
		t.Errorf("%s: restricted profile: "+format, append([]any{what}, a...)...)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		bad("host namespaces (hostNetwork %v, hostPID %v, hostIPC %v)", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	allowedVolumes := func(v corev1.Volume) bool {
		s := v.VolumeSource
		return s.ConfigMap != nil || s.CSI != nil || s.DownwardAPI != nil || s.EmptyDir != nil || s.Ephemeral != nil ||
			s.PersistentVolumeClaim != nil || s.Projected != nil || s.Secret != nil
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil || !allowedVolumes(v) {
			bad("volume %s has a type the profile forbids", v.Name)
		}
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, s := range psc.Sysctls {
		bad("sysctl %s", s.Name)
	}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			bad("container %s has no securityContext", c.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			bad("container %s is privileged", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			bad("container %s must set allowPrivilegeEscalation: false", c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("container %s must drop ALL capabilities", c.Name)
		} else {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					bad("container %s adds capability %s", c.Name, add)
				}
			}
		}
		nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
		if !nonRoot {
			bad("container %s: runAsNonRoot is not true", c.Name)
		}
		uid := sc.RunAsUser
		if uid == nil {
			uid = psc.RunAsUser
		}
		if uid == nil || *uid == 0 {
			bad("container %s: runAsUser must be set and not 0", c.Name)
		} else if *uid != 65532 {
			bad("container %s: runAsUser %d, the image's nonroot user is 65532", c.Name, *uid)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
			bad("container %s: seccompProfile must be RuntimeDefault or Localhost", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			bad("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
			bad("container %s: procMount %s", c.Name, *sc.ProcMount)
		}
		if sc.WindowsOptions != nil && sc.WindowsOptions.HostProcess != nil && *sc.WindowsOptions.HostProcess {
			bad("container %s: hostProcess", c.Name)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				bad("container %s: hostPort %d", c.Name, p.HostPort)
			}
		}
	}
}

// secretKeyName matches setting names that carry secret material.
var secretKeyName = regexp.MustCompile(`(?i)(SECRET|PASSWORD|TOKEN|PRIVATE|CREDENTIAL)`)

// checkNoSecretMaterial: a ConfigMap may hold no secret-looking key and no key material.
func checkNoSecretMaterial(t *testing.T, cm *corev1.ConfigMap) {
	pem := regexp.MustCompile(`-----BEGIN [A-Z ]*-----`)
	nkeySeed := regexp.MustCompile(`\bS[ACNOU][A-Z2-7]{56}\b`)  // NKey seeds
	natsJWT := regexp.MustCompile(`eyJ[A-Za-z0-9_-]{10,}\.eyJ`) // a JWT, e.g. from a .creds file
	for k, v := range cm.Data {
		// A secret-looking name is allowed only when its value is a file path (e.g.
		// TENCENTCLOUD_CREDENTIALS_FILE): a reference to a mounted secret, not the secret.
		looksSecret := secretKeyName.MatchString(k) || regexp.MustCompile(`(?i)KEY$`).MatchString(k)
		if looksSecret && !strings.HasPrefix(v, "/") {
			t.Errorf("ConfigMap %s: key %s looks like secret material; secrets belong in a Secret", cm.Name, k)
		}
		for what, re := range map[string]*regexp.Regexp{"a PEM block": pem, "an NKey seed": nkeySeed, "a JWT": natsJWT} {
			if re.MatchString(v) {
				t.Errorf("ConfigMap %s: key %s contains %s", cm.Name, k, what)
			}
		}
	}
	if len(cm.BinaryData) > 0 {
		t.Errorf("ConfigMap %s has binaryData", cm.Name)
	}
}

// checkGracePeriod: the kubelet's grace period covers the worker's drain plus the margin.
func checkGracePeriod(t *testing.T, dep *appsv1.Deployment, settings *corev1.ConfigMap) {
	drainText := settings.Data["OMICSQ_DRAIN_TIMEOUT"]
	drain, err := time.ParseDuration(drainText) // the worker's own parser
	if err != nil {
		t.Fatalf("OMICSQ_DRAIN_TIMEOUT %q: %v", drainText, err)
	}
	grace := dep.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil {
		t.Fatalf("terminationGracePeriodSeconds not set (Kubernetes' 30 s default ignores the drain timeout)")
	}
	if time.Duration(*grace)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %d is not longer than the drain timeout %s", *grace, drain)
	}
	if got := time.Duration(*grace)*time.Second - drain; got < 5*time.Second {
		t.Errorf("only %s between the drain timeout and SIGKILL: closing /metrics alone may take 5 s", got)
	}
}

// checkEnv: secrets only through secretKeyRef, the worker ID from the pod name.
func checkEnv(t *testing.T, c *corev1.Container) {
	var sawID bool
	for _, e := range c.Env {
		if e.Name == "OMICSQ_WORKER_ID" {
			sawID = e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
		}
		isPath := strings.HasSuffix(e.Name, "_FILE") || strings.HasPrefix(e.Value, "/")
		if secretKeyName.MatchString(e.Name) && !isPath {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("env %s carries a secret but is not a secretKeyRef", e.Name)
			}
		}
		if e.Name == "TENCENTCLOUD_SECRET_KEY" || e.Name == "NATS_PASSWORD" || e.Name == "NATS_TOKEN" {
			if e.Value != "" {
				t.Errorf("env %s has a literal value", e.Name)
			}
		}
	}
	if !sawID {
		t.Errorf("OMICSQ_WORKER_ID is not set from the pod name (downward API)")
	}
}

// checkProbesAndPort: probes on the metrics port, which is where METRICS_ADDR listens.
func checkProbesAndPort(t *testing.T, c *corev1.Container, settings *corev1.ConfigMap) {
	var port int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			port = p.ContainerPort
		}
	}
	if port == 0 {
		t.Fatalf("worker container has no port named metrics")
	}
	addr := settings.Data["METRICS_ADDR"]
	if !strings.HasSuffix(addr, fmt.Sprintf(":%d", port)) || strings.HasPrefix(addr, "127.") || strings.HasPrefix(addr, "localhost") {
		t.Errorf("METRICS_ADDR %q does not listen on all interfaces at the metrics port %d", addr, port)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe is %s on port %s, want %s on port metrics", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}
	if c.Resources.Requests == nil {
		t.Errorf("worker container has no resource requests")
	}
}

// checkVolumes: every mount has its volume, credentials are mounted read-only, /tmp exists.
func checkVolumes(t *testing.T, spec *corev1.PodSpec) {
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, c := range spec.Containers {
		var tmp bool
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				t.Errorf("container %s mounts %s, which is not a volume", c.Name, m.Name)
				continue
			}
			if (v.Secret != nil || v.Projected != nil) && !m.ReadOnly {
				t.Errorf("container %s mounts secret volume %s writable", c.Name, m.Name)
			}
			if m.MountPath == "/tmp" && v.EmptyDir != nil {
				tmp = true
			}
		}
		if c.Name == "worker" && !tmp {
			t.Errorf("no emptyDir at /tmp (the root filesystem is read-only)")
		}
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil && v.Secret.DefaultMode != nil && *v.Secret.DefaultMode&0o007 != 0 {
			t.Errorf("secret volume %s is world-readable (mode %o)", v.Name, *v.Secret.DefaultMode)
		}
	}
}

// checkSelectors: selectors select the worker pods and only them; defaults spread by host.
func checkSelectors(t *testing.T, objs []object, dep *appsv1.Deployment) {
	podLabels := labels.Set(dep.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Fatalf("Deployment selector %v does not match its pod template labels %v (%v)", dep.Spec.Selector, podLabels, err)
	}
	if _, ok := dep.Spec.Selector.MatchLabels["helm.sh/chart"]; ok {
		t.Errorf("helm.sh/chart in the selector: it changes on every chart version and selectors are immutable")
	}
	for _, svc := range workerServices(objs) {
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selects %v, not the worker pods", svc.Name, svc.Spec.Selector)
		}
		if !svc.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s hides not-ready pods: paused workers would not be scraped", svc.Name)
		}
	}
	for _, pdb := range find[*policyv1.PodDisruptionBudget](objs) {
		s, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !s.Matches(podLabels) {
			t.Errorf("PDB %s does not select the worker pods", pdb.Name)
		}
		if pdb.Spec.MinAvailable != nil {
			t.Errorf("PDB %s uses minAvailable; maxUnavailable never blocks a drain", pdb.Name)
		}
		if mu := pdb.Spec.MaxUnavailable; mu == nil || mu.String() == "0" || mu.String() == "0%" {
			t.Errorf("PDB %s: maxUnavailable must be at least 1", pdb.Name)
		}
	}
	for _, tsc := range dep.Spec.Template.Spec.TopologySpreadConstraints {
		s, err := metav1.LabelSelectorAsSelector(tsc.LabelSelector)
		if err != nil || tsc.LabelSelector == nil || !s.Matches(podLabels) {
			t.Errorf("topology spread on %s does not select the worker pods", tsc.TopologyKey)
		}
	}
}

// checkAutoscalers: the target, the ceiling, the trigger's stream and consumer.
func checkAutoscalers(t *testing.T, objs []object, dep *appsv1.Deployment, settings *corev1.ConfigMap) {
	for _, hpa := range find[*autoscalingv2.HorizontalPodAutoscaler](objs) {
		if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != dep.Name {
			t.Errorf("HPA targets %s/%s", hpa.Spec.ScaleTargetRef.Kind, hpa.Spec.ScaleTargetRef.Name)
		}
		if len(hpa.Spec.Metrics) == 0 {
			t.Errorf("HPA without metrics")
		}
	}
	for _, so := range find[*scaledObject](objs) {
		if so.Spec.ScaleTargetRef.Name != dep.Name {
			t.Errorf("ScaledObject targets %s, not %s", so.Spec.ScaleTargetRef.Name, dep.Name)
		}
		if so.Spec.MaxReplicaCount == nil {
			t.Errorf("ScaledObject without maxReplicaCount: KEDA's default is 100, far beyond the API quota")
		}
		// With lanes, a Prometheus trigger on the workers' backlog gauges
		// follows the nats-jetstream one (which sees the bare subject only).
		lanes := settings.Data["OMICSQ_LANES"] != "false"
		if len(so.Spec.Triggers) == 0 || so.Spec.Triggers[0].Type != "nats-jetstream" ||
			lanes != (len(so.Spec.Triggers) == 2 && so.Spec.Triggers[1].Type == "prometheus") {
			t.Fatalf("ScaledObject triggers (lanes %v): %+v", lanes, so.Spec.Triggers)
		}
		md := so.Spec.Triggers[0].Metadata
		if md["stream"] != settings.Data["OMICSQ_REQUESTS_STREAM"] || md["consumer"] != settings.Data["OMICSQ_CONSUMER"] {
			t.Errorf("KEDA watches %s/%s, the worker consumes %s/%s", md["stream"], md["consumer"], settings.Data["OMICSQ_REQUESTS_STREAM"], settings.Data["OMICSQ_CONSUMER"])
		}
		if so.Spec.Triggers[0].AuthenticationRef == nil && md["natsServerMonitoringEndpoint"] == "" {
			t.Errorf("KEDA trigger has no monitoring endpoint and no TriggerAuthentication")
		}
		if md["account"] == "" && md["accountID"] == "" && so.Spec.Triggers[0].AuthenticationRef == nil {
			t.Errorf("KEDA trigger needs account or accountID")
		}
		if ref := so.Spec.Triggers[0].AuthenticationRef; ref != nil {
			var found bool
			for _, ta := range find[*triggerAuthentication](objs) {
				found = found || ta.Name == ref.Name
			}
			if !found {
				t.Errorf("trigger references TriggerAuthentication %s, which is not rendered", ref.Name)
			}
		}
	}
}

// checkMonitors: ServiceMonitor XOR PodMonitor, scraping the metrics port of the worker pods.
func checkMonitors(t *testing.T, objs []object, dep *appsv1.Deployment) {
	sms, pms := find[*serviceMonitor](objs), find[*podMonitor](objs)
	if len(sms) > 0 && len(pms) > 0 {
		t.Errorf("both a ServiceMonitor and a PodMonitor: every pod would be scraped twice")
	}
	podLabels := labels.Set(dep.Spec.Template.Labels)
	for _, sm := range sms {
		svcs := workerServices(objs)
		if len(svcs) == 0 {
			t.Errorf("ServiceMonitor without a Service")
		}
		for _, svc := range svcs {
			s, _ := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if !s.Matches(labels.Set(svc.Labels)) {
				t.Errorf("ServiceMonitor selector does not match Service %s", svc.Name)
			}
		}
		if len(sm.Spec.Endpoints) == 0 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoints: %+v", sm.Spec.Endpoints)
		}
		if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, dep.Namespace) {
			t.Errorf("ServiceMonitor does not look in namespace %s", dep.Namespace)
		}
	}
	for _, pm := range pms {
		s, _ := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if !s.Matches(podLabels) {
			t.Errorf("PodMonitor does not select the worker pods")
		}
		if len(pm.Spec.PodMetricsEndpoints) == 0 || pm.Spec.PodMetricsEndpoints[0].Port != "metrics" {
			t.Errorf("PodMonitor endpoints: %+v", pm.Spec.PodMetricsEndpoints)
		}
		if !slices.Contains(pm.Spec.NamespaceSelector.MatchNames, dep.Namespace) {
			t.Errorf("PodMonitor does not look in namespace %s", dep.Namespace)
		}
	}
}

// checkTestPod: the helm test hook fetches /metrics through the Service and looks for
// omicsq_build_info, under the restricted profile, outside every worker selector.
func checkTestPod(t *testing.T, objs []object, dep *appsv1.Deployment) {
	svcs := workerServices(objs)
	pods := find[*corev1.Pod](objs)
	if len(svcs) == 0 {
		if len(pods) != 0 {
			t.Errorf("a test pod without a Service to reach")
		}
		return
	}
	if len(pods) != 1 {
		t.Fatalf("want one helm test pod, got %d", len(pods))
	}
	p := pods[0]
	if p.Annotations["helm.sh/hook"] != "test" {
		t.Errorf("test pod %s lacks helm.sh/hook: test", p.Name)
	}
	if !strings.Contains(p.Annotations["helm.sh/hook-delete-policy"], "before-hook-creation") {
		t.Errorf("test pod %s: hook-delete-policy should include before-hook-creation", p.Name)
	}
	checkRestricted(t, "test Pod "+p.Name, &p.Spec)
	sel, _ := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if sel.Matches(labels.Set(p.Labels)) {
		t.Errorf("the test pod matches the worker selector: the Service, PDB and monitors would pick it up")
	}
	script := strings.Join(p.Spec.Containers[0].Command, " ")
	wantURL := fmt.Sprintf("http://%s.%s.svc:%d/metrics", svcs[0].Name, svcs[0].Namespace, svcs[0].Spec.Ports[0].Port)
	fetchAndGrep := regexp.MustCompile(`wget [^|;]*` + regexp.QuoteMeta(wantURL) + `[^|;]*\|\s*grep [^|;]*omicsq_build_info`)
	if !fetchAndGrep.MatchString(script) {
		t.Errorf("test pod does not check omicsq_build_info at %s: %s", wantURL, script)
	}
	if p.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("test pod restartPolicy %s, want Never", p.Spec.RestartPolicy)
	}
}

// checkNACK: rendered only with provision=false, and matching the worker's names.
func checkNACK(t *testing.T, objs []object, settings *corev1.ConfigMap) {
	streams, consumers := find[*nackStream](objs), find[*nackConsumer](objs)
	if len(streams)+len(consumers) == 0 {
		return
	}
	if settings.Data["OMICSQ_PROVISION"] != "false" {
		t.Errorf("NACK resources with OMICSQ_PROVISION=%s: the worker and NACK would both manage the streams", settings.Data["OMICSQ_PROVISION"])
	}
	names := map[string]bool{}
	for _, s := range streams {
		names[s.Spec.Name] = true
		if s.Spec.Storage != "file" || fmt.Sprint(s.Spec.Replicas) != settings.Data["OMICSQ_STREAM_REPLICAS"] {
			t.Errorf("stream %s: storage %s replicas %d", s.Spec.Name, s.Spec.Storage, s.Spec.Replicas)
		}
		if _, err := time.ParseDuration(s.Spec.MaxAge); err != nil {
			t.Errorf("stream %s maxAge %q: %v", s.Spec.Name, s.Spec.MaxAge, err)
		}
	}
	for _, k := range []string{"OMICSQ_REQUESTS_STREAM", "OMICSQ_RESULTS_STREAM", "OMICSQ_DLQ_STREAM", "OMICSQ_ADVISORY_STREAM"} {
		if !names[settings.Data[k]] {
			t.Errorf("no NACK Stream for %s=%s", k, settings.Data[k])
		}
	}
	var worker bool
	for _, c := range consumers {
		if c.Spec.AckPolicy != "explicit" {
			t.Errorf("consumer %s: ackPolicy %s, the worker requires explicit", c.Spec.DurableName, c.Spec.AckPolicy)
		}
		if c.Spec.DurableName == settings.Data["OMICSQ_CONSUMER"] && c.Spec.StreamName == settings.Data["OMICSQ_REQUESTS_STREAM"] {
			worker = true
			if c.Spec.MaxDeliver != -1 || fmt.Sprint(c.Spec.MaxAckPending) != settings.Data["OMICSQ_MAX_ACK_PENDING"] || c.Spec.AckWait != settings.Data["OMICSQ_ACK_WAIT"] {
				t.Errorf("worker consumer differs from the worker's settings: %+v", c.Spec)
			}
		}
	}
	if !worker {
		t.Errorf("no NACK Consumer %s on %s", settings.Data["OMICSQ_CONSUMER"], settings.Data["OMICSQ_REQUESTS_STREAM"])
	}
}

// checkServiceAccount: the pod runs as the rendered ServiceAccount; the TKE webhook
// annotation appears exactly when the pod relies on the webhook.
func checkServiceAccount(t *testing.T, objs []object, dep *appsv1.Deployment) {
	spec := dep.Spec.Template.Spec
	c := workerContainer(t, dep)
	var explicitTKE bool
	for _, e := range c.Env {
		explicitTKE = explicitTKE || e.Name == "TKE_ROLE_ARN"
	}
	for _, sa := range find[*corev1.ServiceAccount](objs) {
		if sa.Name != spec.ServiceAccountName {
			t.Errorf("ServiceAccount %s rendered, pod uses %s", sa.Name, spec.ServiceAccountName)
		}
		var arn string
		for k, v := range sa.Annotations {
			if strings.HasSuffix(k, "/role-arn") {
				arn = v
			}
		}
		if arn != "" && explicitTKE {
			t.Errorf("both the webhook annotation and explicit TKE_* variables")
		}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("the Kubernetes API token is mounted; the worker never calls the API")
	}
}

// TestPrometheusRuleHasEveryAlert: the PrometheusRule embeds every rule of
// files/alerts.rules.yaml unchanged (plus the extra labels), and disabledAlerts drops one.
func TestPrometheusRuleHasEveryAlert(t *testing.T) {
	helmBinary(t)
	raw, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.rules.yaml"))
	if err != nil {
		t.Fatalf("the chart embeds files/alerts.rules.yaml: %v", err)
	}
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatal(err)
	}
	var file rulesFile
	if err := decodeStrict(js, &file); err != nil {
		t.Fatalf("files/alerts.rules.yaml is not a plain Prometheus rules file: %v", err)
	}
	want := map[string]rule{}
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				want[r.Alert] = r
			}
		}
	}
	if len(want) == 0 {
		t.Fatal("files/alerts.rules.yaml has no alerts")
	}

	objs := render(t, []string{ciValues("full-values.yaml")})
	pr := one[*prometheusRule](t, objs)
	got := map[string]rule{}
	for i, g := range pr.Spec.Groups {
		if g.Name != file.Groups[i].Name {
			t.Errorf("group %d is %q, the file has %q", i, g.Name, file.Groups[i].Name)
		}
		for _, r := range g.Rules {
			got[r.Alert] = r
		}
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("alert %s of the rules file is missing from the PrometheusRule", name)
			continue
		}
		if g.Expr != w.Expr || g.For != w.For || !mapsEqual(g.Annotations, w.Annotations) {
			t.Errorf("alert %s differs from the rules file", name)
		}
		for k, v := range w.Labels {
			if g.Labels[k] != v && k != "team" {
				t.Errorf("alert %s: label %s=%q, the file says %q", name, k, g.Labels[k], v)
			}
		}
		if g.Labels["team"] != "genomics-platform" {
			t.Errorf("alert %s lacks prometheusRule.additionalRuleLabels", name)
		}
	}
	if len(got) != len(want) {
		t.Errorf("PrometheusRule has %d alerts, the file %d", len(got), len(want))
	}

	// disabledAlerts leaves exactly that alert out.
	var drop string
	for name := range want {
		drop = name
		break
	}
	objs = render(t, []string{ciValues("full-values.yaml")}, "prometheusRule.disabledAlerts={"+drop+"}")
	for _, g := range one[*prometheusRule](t, objs).Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == drop {
				t.Errorf("disabledAlerts={%s} did not drop it", drop)
			}
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestDashboardConfigMap: the Grafana ConfigMap carries files/dashboard.json unchanged, with
// the sidecar label and the folder annotation.
func TestDashboardConfigMap(t *testing.T) {
	helmBinary(t)
	raw, err := os.ReadFile(filepath.Join(chartDir, "files", "dashboard.json"))
	if err != nil {
		t.Fatalf("the chart embeds files/dashboard.json: %v", err)
	}
	var want any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatalf("files/dashboard.json: %v", err)
	}
	objs := render(t, []string{ciValues("default-values.yaml")}, "dashboards.enabled=true", "dashboards.labelValue=yes", "dashboards.folder=Lab")
	var cm *corev1.ConfigMap
	for _, c := range find[*corev1.ConfigMap](objs) {
		if strings.HasSuffix(c.Name, "-dashboard") {
			cm = c
		}
	}
	if cm == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	if cm.Labels["grafana_dashboard"] != "yes" || cm.Annotations["grafana_folder"] != "Lab" {
		t.Errorf("dashboard ConfigMap labels %v annotations %v", cm.Labels, cm.Annotations)
	}
	if len(cm.Data) != 1 {
		t.Fatalf("one dashboard per ConfigMap, got %d keys", len(cm.Data))
	}
	for k, v := range cm.Data {
		var got any
		if err := json.Unmarshal([]byte(v), &got); err != nil {
			t.Fatalf("%s is not JSON: %v", k, err)
		}
		a, _ := json.Marshal(got)
		b, _ := json.Marshal(want)
		if string(a) != string(b) {
			t.Errorf("%s differs from files/dashboard.json", k)
		}
	}
}

// TestBadValuesRejected: each testdata/bad-*.yaml must make helm template fail; its first
// line "# expect: TEXT" names text the error must contain (the schema path or the message
// of a render-time check).
func TestBadValuesRejected(t *testing.T) {
	helmBinary(t)
	files, err := filepath.Glob(filepath.Join("testdata", "bad-*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/bad-*.yaml: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(raw), "\n")
			expect, ok := strings.CutPrefix(first, "# expect: ")
			if !ok || strings.TrimSpace(expect) == "" {
				t.Fatalf("%s must start with '# expect: <text of the error>'", f)
			}
			out, err := runHelm(t, templateArgs(chartDir, []string{ciValues("default-values.yaml"), f}, nil)...)
			if err == nil {
				t.Fatalf("helm template accepted %s:\n%.400s", f, out)
			}
			if !strings.Contains(err.Error(), strings.TrimSpace(expect)) {
				t.Errorf("helm template failed, but not with %q:\n%v", expect, err)
			}
		})
	}
}

// TestNotes renders NOTES.txt (helm template skips it): a copy of the chart renders the
// notes through tpl into a ConfigMap.
func TestNotes(t *testing.T) {
	helmBinary(t)
	dir := filepath.Join(t.TempDir(), "omicsq")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "files", "notes-under-test.txt"), notes, 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n  namespace: x\ndata:\n  notes: {{ tpl (.Files.Get \"files/notes-under-test.txt\") . | quote }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes.yaml"), []byte(wrapper), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		files []string
		sets  []string
		want  []string
	}{
		{"default", []string{ciValues("default-values.yaml")}, nil,
			[]string{"nats://nats.nats.svc.cluster.local:4222", "port-forward deploy/rel-omicsq 9464:metrics", "omicsq_build_info", "terminationGracePeriodSeconds 40", "helm test rel"}},
		{"full", []string{ciValues("full-values.yaml")}, nil,
			[]string{"KEDA 1-4", "only binds", "workload identity"}},
		{"warnings", []string{ciValues("default-values.yaml")}, []string{"rateLimit.scope=local", "worker.concurrency=600"},
			[]string{"WARNING: rateLimit.scope is local", "exceeds jetstream.maxAckPending"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append(templateArgs(dir, c.files, c.sets), "--show-only", "templates/zz-notes.yaml")
			out, err := runHelm(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			var cm corev1.ConfigMap
			js, err := yaml.YAMLToJSON([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(js, &cm); err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(cm.Data["notes"], w) {
					t.Errorf("NOTES lacks %q:\n%s", w, cm.Data["notes"])
				}
			}
		})
	}
}

// TestGracePeriodArithmetic: terminationGracePeriodSeconds = ceil(drain) + margin for the
// duration forms the worker accepts.
func TestGracePeriodArithmetic(t *testing.T) {
	helmBinary(t)
	for drain, margin := range map[string]int{"25s": 15, "500ms": 15, "1m30s": 20, "1.5h": 5, "2m0.5s": 10, "90000ms": 15} {
		objs := render(t, []string{ciValues("default-values.yaml")}, "shutdown.drainTimeout="+drain, fmt.Sprintf("shutdown.gracePeriodMarginSeconds=%d", margin))
		d, err := time.ParseDuration(drain)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(math.Ceil(d.Seconds())) + int64(margin)
		got := workerDeployment(t, objs).Spec.Template.Spec.TerminationGracePeriodSeconds
		if got == nil || *got != want {
			t.Errorf("drain %s + margin %d: terminationGracePeriodSeconds %v, want %d", drain, margin, got, want)
		}
	}
}
