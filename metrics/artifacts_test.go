package metrics

// Checks that keep the operator-facing artifacts (alert rules, dashboard,
// docs) consistent with the series this package registers.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"
)

const (
	rulesPath      = "../deploy/helm/omicsq/files/alerts.rules.yaml"
	dashboardPath  = "../deploy/helm/omicsq/files/dashboard.json"
	operationsPath = "../docs/operations.md"
	metricsDocPath = "../docs/metrics.md"
	runbookBaseURL = "https://github.com/omicsq/omicsq/blob/main/docs/operations.md#"
)

func TestLint(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// registeredFamilies maps every family name New registers to its type.
func registeredFamilies(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	_, reg := newTestMetrics(t)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]dto.MetricType, len(families))
	for _, f := range families {
		out[f.GetName()] = f.GetType()
	}
	return out
}

// exists reports whether name is a registered series name, including the
// _bucket, _sum and _count series of histograms and summaries.
func exists(families map[string]dto.MetricType, name string) bool {
	if _, ok := families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch families[base] {
		case dto.MetricType_HISTOGRAM:
			return true
		case dto.MetricType_SUMMARY:
			return suffix != "_bucket"
		}
	}
	return false
}

var (
	promqlString    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promqlMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promqlRange     = regexp.MustCompile(`\[[^\]]*\]`)
	promqlLabelList = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlVariable  = regexp.MustCompile(`\$\{?\w+\}?`)
	promqlIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// metricNames returns the metric names a PromQL expression selects. Not a
// parser, but enough for the expressions we write: identifiers left after
// removing strings, matchers, ranges, label lists and Grafana variables that
// are not function calls and contain an underscore (label names, keywords
// and functions without one never are metric names here).
func metricNames(expr string) []string {
	s := promqlString.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlRange.ReplaceAllString(s, " ")
	s = promqlLabelList.ReplaceAllString(s, " ")
	s = promqlVariable.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") || !strings.Contains(name, "_") {
			continue
		}
		names = append(names, name)
	}
	return names
}

func TestMetricNamesExtraction(t *testing.T) {
	t.Parallel()
	got := metricNames(`histogram_quantile(0.9, sum by (le, action) (rate(omicsq_api_request_duration_seconds_bucket{namespace=~"$namespace", class!="dead_letter"}[$__rate_interval])))
		/ on () group_left () sum(rate(omicsq_messages_processed_total[5m])) and time() - max(go_goroutines) > 0`)
	want := []string{"omicsq_api_request_duration_seconds_bucket", "omicsq_messages_processed_total", "go_goroutines"}
	if !slices.Equal(got, want) {
		t.Errorf("metricNames = %v; want %v", got, want)
	}
}

// Alert rules.

type ruleFile struct {
	Groups []struct {
		Name  string      `json:"name"`
		Rules []alertRule `json:"rules"`
	} `json:"groups"`
}

type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func loadRules(t *testing.T) ([]alertRule, []byte) {
	t.Helper()
	raw, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	// Strict: a misspelt key (anotations, for_) is an error, not a silently
	// missing field.
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	if len(f.Groups) == 0 {
		t.Fatalf("%s: no groups", rulesPath)
	}
	var rules []alertRule
	for _, g := range f.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("%s: group %q needs a name and rules", rulesPath, g.Name)
		}
		rules = append(rules, g.Rules...)
	}
	return rules, raw
}

var (
	alertName      = regexp.MustCompile(`^Omicsq[A-Z][A-Za-z0-9]*$`)
	promDuration   = regexp.MustCompile(`^[0-9]+(ms|s|m|h|d|w)$`)
	requiredAlerts = []string{
		"OmicsqBacklogAgeHigh", "OmicsqNoSuccessfulSubmission", "OmicsqDeadLetterGrowth", "OmicsqThrottleRatioHigh",
		"OmicsqErrorRatioHigh", "OmicsqSubmissionsPaused", "OmicsqNatsDisconnected",
	}
)

func TestAlertRulesStructure(t *testing.T) {
	t.Parallel()
	rules, raw := loadRules(t)
	if strings.Contains(string(raw), "{{") {
		t.Errorf("%s contains {{: the Helm chart embeds it verbatim", rulesPath)
	}
	seen := map[string]bool{}
	for _, r := range rules {
		if !alertName.MatchString(r.Alert) {
			t.Errorf("alert %q: want a CamelCase name starting with Omicsq", r.Alert)
		}
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if strings.TrimSpace(r.Expr) == "" {
			t.Errorf("%s: empty expr", r.Alert)
		}
		if !promDuration.MatchString(r.For) {
			t.Errorf("%s: for %q; want a duration such as 10m", r.Alert, r.For)
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q; want warning or critical", r.Alert, s)
		}
		for _, k := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[k]) == "" {
				t.Errorf("%s: missing annotation %s", r.Alert, k)
			}
		}
		if want := runbookBaseURL + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
			t.Errorf("%s: runbook_url %q; want %q", r.Alert, r.Annotations["runbook_url"], want)
		}
		for k, v := range r.Annotations {
			if strings.Contains(v, "$labels") || strings.Contains(v, "$value") {
				t.Errorf("%s: annotation %s uses templating; the chart cannot escape it", r.Alert, k)
			}
		}
	}
	for _, name := range requiredAlerts {
		if !seen[name] {
			t.Errorf("alert %s is missing", name)
		}
	}
}

func TestAlertRulesUseRegisteredOmicsqSeries(t *testing.T) {
	t.Parallel()
	families := registeredFamilies(t)
	rules, _ := loadRules(t)
	for _, r := range rules {
		names := metricNames(r.Expr)
		if len(names) == 0 {
			t.Errorf("%s: found no metric in %q", r.Alert, r.Expr)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "omicsq_") {
				t.Errorf("%s uses %s: rules may use only omicsq_* series, to work without the NATS exporter", r.Alert, n)
			}
			if !exists(families, n) {
				t.Errorf("%s uses %s, which the registry does not have", r.Alert, n)
			}
		}
	}
}

// runbookEntries returns each "### Name" entry of the "## Alert runbook"
// section with its text.
func runbookEntries(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(operationsPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	start := slices.Index(lines, "## Alert runbook")
	if start < 0 {
		t.Fatalf("%s has no \"## Alert runbook\" section", operationsPath)
	}
	entries := map[string]string{}
	var current string
	for _, line := range lines[start+1:] {
		if strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "# ") {
			break // the next top-level section
		}
		if name, ok := strings.CutPrefix(line, "### "); ok {
			current = strings.TrimSpace(name)
			if _, dup := entries[current]; dup {
				t.Errorf("runbook entry %s appears twice", current)
			}
			entries[current] = ""
			continue
		}
		if current != "" {
			entries[current] += line + "\n"
		}
	}
	return entries
}

func TestRunbookCoversEveryAlert(t *testing.T) {
	t.Parallel()
	rules, _ := loadRules(t)
	entries := runbookEntries(t)
	var alerts []string
	for _, r := range rules {
		alerts = append(alerts, r.Alert)
		text, ok := entries[r.Alert]
		if !ok {
			t.Errorf("%s has no \"### %s\" entry under \"## Alert runbook\" in %s", r.Alert, r.Alert, operationsPath)
			continue
		}
		for _, part := range []string{"**Meaning.**", "**Likely causes.**", "**Confirm.**", "**Act.**"} {
			if !strings.Contains(text, part) {
				t.Errorf("runbook entry %s lacks %s", r.Alert, part)
			}
		}
	}
	for name := range entries {
		if !slices.Contains(alerts, name) {
			t.Errorf("runbook entry %s matches no alert", name)
		}
	}
}

// Dashboard.

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboardPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasourceRef           `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Datasource *datasourceRef `json:"datasource"`
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"` // of collapsed rows
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashboardPanel `json:"panels"`
}

func loadDashboard(t *testing.T) (dashboard, []dashboardPanel) {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var flat []dashboardPanel
	for _, p := range d.Panels {
		flat = append(flat, p)
		flat = append(flat, p.Panels...)
	}
	return d, flat
}

var wantDatasource = datasourceRef{Type: "prometheus", UID: "${datasource}"}

func TestDashboardStructure(t *testing.T) {
	t.Parallel()
	d, panels := loadDashboard(t)
	if d.UID != "omicsq-worker" || d.Title != "omicsq worker" {
		t.Errorf("uid %q, title %q; want omicsq-worker, omicsq worker", d.UID, d.Title)
	}

	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch {
		case v.Name == "datasource":
			if v.Type != "datasource" || string(v.Query) != `"prometheus"` {
				t.Errorf("variable datasource: type %q query %s; want datasource, \"prometheus\"", v.Type, v.Query)
			}
		case v.Type == "query":
			if v.Datasource == nil || *v.Datasource != wantDatasource {
				t.Errorf("variable %s: datasource %v; want %v", v.Name, v.Datasource, wantDatasource)
			}
		}
	}
	for _, name := range []string{"datasource", "namespace", "pod"} {
		if !vars[name] {
			t.Errorf("variable %s is missing", name)
		}
	}

	ids := map[int]bool{}
	var occupied [24][]string // per column: title at each row cell
	for _, p := range panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < min(g.X+g.W, 24); x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				for len(occupied[x]) <= y {
					occupied[x] = append(occupied[x], "")
				}
				if other := occupied[x][y]; other != "" {
					t.Errorf("panels %q and %q overlap at (%d,%d)", other, p.Title, x, y)
				}
				occupied[x][y] = p.Title
			}
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("row %q has queries", p.Title)
			}
			continue
		}
		if p.Datasource == nil || *p.Datasource != wantDatasource {
			t.Errorf("panel %q: datasource %v; want %v", p.Title, p.Datasource, wantDatasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || *tg.Datasource != wantDatasource {
				t.Errorf("panel %q query %s: datasource %v; want %v", p.Title, tg.RefID, tg.Datasource, wantDatasource)
			}
			if !strings.Contains(tg.Expr, `namespace=~"$namespace"`) || !strings.Contains(tg.Expr, `pod=~"$pod"`) {
				t.Errorf("panel %q query %s ignores the namespace or pod variable: %s", p.Title, tg.RefID, tg.Expr)
			}
			for _, r := range promqlRange.FindAllString(tg.Expr, -1) {
				if r != "[$__rate_interval]" {
					t.Errorf("panel %q query %s uses range %s; want [$__rate_interval]", p.Title, tg.RefID, r)
				}
			}
		}
	}
}

func TestDashboardUsesRegisteredSeries(t *testing.T) {
	t.Parallel()
	families := registeredFamilies(t)
	_, panels := loadDashboard(t)
	used := map[string]bool{}
	for _, p := range panels {
		for _, tg := range p.Targets {
			names := metricNames(tg.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q query %s: found no metric in %q", p.Title, tg.RefID, tg.Expr)
			}
			for _, n := range names {
				if !exists(families, n) {
					t.Errorf("panel %q uses %s, which the registry does not have", p.Title, n)
				}
				used[strings.TrimSuffix(n, "_bucket")] = true
			}
		}
	}
	// Every omicsq series should be visible somewhere.
	for name := range families {
		if strings.HasPrefix(name, "omicsq_") && !used[name] {
			t.Errorf("%s appears on no dashboard panel", name)
		}
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query (as a
// recording rule, with the Grafana variables substituted). Without promtool
// it is skipped, unless OMICSQ_REQUIRE_PROMTOOL is set, as
// scripts/check-rules.sh does.
func TestDashboardQueriesParse(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("OMICSQ_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool not on PATH and OMICSQ_REQUIRE_PROMTOOL is set")
		}
		t.Skip("promtool not on PATH (Debian package prometheus)")
	}
	_, panels := loadDashboard(t)
	vars := strings.NewReplacer("$__rate_interval", "5m", "$namespace", ".*", "$pod", ".*")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, p := range panels {
		for _, tg := range p.Targets {
			expr, err := json.Marshal(vars.Replace(tg.Expr)) // a JSON string is a valid YAML scalar
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "      - record: dashboard:panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, expr)
		}
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.rules.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard queries: %v\n%s", err, out)
	}
}

// Metric reference.

var omicsqName = regexp.MustCompile(`\bomicsq_[a-z0-9_]*[a-z0-9]\b`)

func TestMetricsDocMatchesRegistry(t *testing.T) {
	t.Parallel()
	families := registeredFamilies(t)
	raw, err := os.ReadFile(metricsDocPath)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "| `omicsq_") {
			continue
		}
		name := omicsqName.FindString(line)
		documented[name] = true
	}
	for name := range families {
		if strings.HasPrefix(name, "omicsq_") && !documented[name] {
			t.Errorf("%s has no row in the %s table", name, metricsDocPath)
		}
	}
	for _, name := range omicsqName.FindAllString(string(raw), -1) {
		if !exists(families, name) {
			t.Errorf("%s mentions %s, which the registry does not have", metricsDocPath, name)
		}
	}
}

// TestDocumentedLabelValues checks that the label values the docs list for
// each label are exactly the ones New pre-initialises.
func TestDocumentedLabelValues(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(metricsDocPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	for label, values := range map[string][]string{
		"outcome":                 withOther(outcomes),
		"reason (dead letters)":   withOther(deadLetterCauses),
		"reason (retries)":        withOther(retryReasons),
		"result (reconciliation)": withOther(reconcileResults),
		"reason (pause)":          withOther(pauseReasons),
		"action":                  withOther(apiActions),
		"class":                   withOther(apiClasses),
	} {
		var quoted []string
		for _, v := range values {
			quoted = append(quoted, "`"+v+"`")
		}
		line := "- " + label + ": " + strings.Join(quoted, ", ")
		if !strings.Contains(doc, line) {
			t.Errorf("%s lacks the line %q", metricsDocPath, line)
		}
	}
	for _, code := range apiErrorCodes {
		if !strings.Contains(doc, "`"+code+"`") {
			t.Errorf("%s does not list the allow-listed code %s", metricsDocPath, code)
		}
	}
}
