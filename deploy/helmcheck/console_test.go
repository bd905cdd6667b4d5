package helmcheck

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// workerDeployment is the worker's Deployment among the rendered ones (the
// console, when enabled, has its own).
func workerDeployment(t *testing.T, objs []object) *appsv1.Deployment {
	t.Helper()
	var found []*appsv1.Deployment
	for _, d := range find[*appsv1.Deployment](objs) {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == "worker" {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one worker Deployment, got %d", len(found))
	}
	return found[0]
}

// TestConsoleDeployment: off by default; when enabled, its own Deployment
// and Service (selectors apart from the workers', so neither the worker's
// Service nor its PDB ever selects a console pod), the restricted profile,
// the token from its Secret as a file, read-only passed on, the NATS
// settings the workers have.
func TestConsoleDeployment(t *testing.T) {
	helmBinary(t)
	for _, d := range find[*appsv1.Deployment](render(t, []string{ciValues("full-values.yaml")})) {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == "console" {
			t.Fatal("the console renders without console.enabled")
		}
	}
	objs := render(t, []string{ciValues("full-values.yaml")}, "console.enabled=true", "console.auth.existingSecret=ops-token",
		"console.readOnly=true", "nats.auth.type=creds", "nats.auth.existingSecret=nats-creds",
		"console.nats.auth.type=creds", "console.nats.auth.existingSecret=console-creds")
	checkObjects(t, objs)
	var dep *appsv1.Deployment
	for _, d := range find[*appsv1.Deployment](objs) {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == "console" {
			dep = d
		}
	}
	if dep == nil {
		t.Fatal("no console Deployment")
	}
	spec := dep.Spec.Template.Spec
	checkRestricted(t, "Deployment "+dep.Name, &spec)
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "console" {
		t.Fatalf("console containers: %+v", spec.Containers)
	}
	c := spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/console"}) {
		t.Errorf("console command %q", c.Command)
	}
	for _, want := range []string{"--allow-remote", "--read-only", "--auth-token-file=/etc/omicsq-console/token"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("console args %q lack %s", c.Args, want)
		}
	}
	// Its own NATS login: the console-creds Secret, never the workers'.
	var tokenFromSecret, ownCreds, workerCreds bool
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			tokenFromSecret = tokenFromSecret || v.Secret.SecretName == "ops-token"
			ownCreds = ownCreds || v.Secret.SecretName == "console-creds"
			workerCreds = workerCreds || v.Secret.SecretName == "nats-creds"
		}
	}
	if !tokenFromSecret || !ownCreds || workerCreds {
		t.Errorf("console volumes: token from its Secret %v, its own NATS creds %v, the workers' creds %v", tokenFromSecret, ownCreds, workerCreds)
	}
	if len(c.EnvFrom) == 0 || c.EnvFrom[0].ConfigMapRef == nil || !envHas(c.Env, "NATS_CREDS") || envValue(c.Env, "NATS_INBOX_PREFIX") != "_INBOX_console" {
		t.Errorf("the console's NATS settings: envFrom %+v env %+v", c.EnvFrom, c.Env)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("console readiness probe: %+v", c.ReadinessProbe)
	}
	podLabels := labels.Set(dep.Spec.Template.Labels)
	worker := workerDeployment(t, objs)
	for _, s := range find[*corev1.Service](objs) {
		sel := labels.SelectorFromSet(s.Spec.Selector)
		isConsole := strings.HasSuffix(s.Name, "-console")
		if sel.Matches(podLabels) != isConsole {
			t.Errorf("Service %s selects console pods: %v (want %v)", s.Name, sel.Matches(podLabels), isConsole)
		}
		if isConsole && sel.Matches(labels.Set(worker.Spec.Template.Labels)) {
			t.Errorf("the console's Service selects worker pods")
		}
	}
	ws, err := metav1.LabelSelectorAsSelector(worker.Spec.Selector)
	if err != nil || ws.Matches(podLabels) {
		t.Errorf("the worker Deployment's selector matches console pods (%v)", err)
	}
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func envHas(env []corev1.EnvVar, name string) bool {
	return slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == name })
}

// workerServices are the rendered Services but the console's.
func workerServices(objs []object) []*corev1.Service {
	var out []*corev1.Service
	for _, s := range find[*corev1.Service](objs) {
		if s.Labels["app.kubernetes.io/component"] != "console" {
			out = append(out, s)
		}
	}
	return out
}

// In proxy mode without a token, only the proxy's pods may reach the
// console: a NetworkPolicy admits them alone.
func TestConsoleProxyModeIsFenced(t *testing.T) {
	helmBinary(t)
	objs := render(t, []string{ciValues("default-values.yaml")}, "console.enabled=true", "console.auth.proxyHeader=X-Forwarded-Email",
		"console.auth.proxyPodSelector.app=oauth2-proxy")
	nps := find[*networkingv1.NetworkPolicy](objs)
	if len(nps) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(nps))
	}
	np := nps[0]
	if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] != "console" || len(np.Spec.Ingress) != 1 ||
		len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector.MatchLabels["app"] != "oauth2-proxy" {
		t.Errorf("NetworkPolicy: %+v", np.Spec)
	}
}
