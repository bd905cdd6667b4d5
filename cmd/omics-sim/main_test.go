package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

// TestRunServesAndShutsDown starts omics-sim as a harness would, reads the
// address from the startup line, makes signed calls, and stops it.
func TestRunServesAndShutsDown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdoutR, stdoutW := io.Pipe()
	logs := &logcapture.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--rate", "3", "--seed", "9", "--known-applications", "app-1", "--log-level", "debug",
			"--describe-lag", "1ms"}, stdoutW, logs)
		stdoutW.Close()
	}()

	line, err := bufio.NewReader(stdoutR).ReadString('\n')
	if err != nil {
		t.Fatalf("read startup line: %v (logs: %s)", err, logs)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "omics-sim listening on ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("startup line %q, want \"omics-sim listening on 127.0.0.1:PORT\"", line)
	}
	go io.Copy(io.Discard, stdoutR) //nolint:errcheck // drains until run returns and closes the pipe

	c, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: addr, InsecureHTTP: true, Timeout: 5 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	req := &submit.RunApplicationRequest{ApplicationId: "app-1", Name: "PATIENT-77", EnvironmentId: "env-1", InputBase64: new("e30K")}
	if _, err := c.RunApplication(t.Context(), req); err != nil {
		t.Fatalf("RunApplication: %v", err)
	}
	req.ApplicationId, req.Name = "app-2", "PATIENT-78"
	if _, err := c.RunApplication(t.Context(), req); err == nil || !strings.Contains(err.Error(), "ResourceNotFound.ApplicationNotExist") {
		t.Errorf("unknown application: err = %v", err)
	}

	resp, err := http.Get("http://" + addr + "/sandbox/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st sandbox.Stats
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.Rate != 3 || st.RunGroupsCreated != 1 || st.Visibility.Lag != time.Millisecond {
		t.Errorf("stats: rate %d, created %d, visibility %+v; want 3, 1, 1ms lag", st.Rate, st.RunGroupsCreated, st.Visibility)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	out := logs.String()
	if !strings.Contains(out, "outcome=success") || !strings.Contains(out, "omics-sim shutting down") {
		t.Errorf("logs lack the call record or shutdown:\n%s", out)
	}
	if strings.Contains(out, "PATIENT-") || strings.Contains(out, "e30K") {
		t.Errorf("logs contain request values:\n%s", out)
	}
}

func TestFlagValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want []string // substrings of the error or usage output
	}{
		{[]string{"--fault-throttle", "1.5"}, []string{"fault-throttle", "probability from 0 to 1"}},
		{[]string{"--fault-internal-error", "-0.1"}, []string{"fault-internal-error", "probability from 0 to 1"}},
		{[]string{"--fault-commit-then-fail", "NaN"}, []string{"fault-commit-then-fail", "probability"}},
		{[]string{"--fault-latency-p", "2"}, []string{"fault-latency-p", "probability"}},
		{[]string{"--rate", "-1"}, []string{"rate", "integer >= 0"}},
		{[]string{"--fault-commit-then-fail-modes", "bad_gateway,explode"}, []string{"fault-commit-then-fail-modes", "bad_gateway, drop and hang"}},
		{[]string{"--fault-latency", "-1s"}, []string{"--fault-latency must not be negative"}},
		{[]string{"--describe-lag", "-1s"}, []string{"--describe-lag must not be negative"}},
		{[]string{"--describe-lag-max", "-1s"}, []string{"--describe-lag-max must not be negative"}},
		{[]string{"--describe-lag", "2s", "--describe-lag-max", "1s"}, []string{"--describe-lag-max must be 0 or at least --describe-lag"}},
		{[]string{"--describe-lag", "soon"}, []string{"describe-lag"}},
		{[]string{"--describe-reorder=maybe"}, []string{"describe-reorder"}},
		{[]string{"--max-skew", "0s"}, []string{"--max-skew"}},
		{[]string{"--secret-key", ""}, []string{"--secret-key"}},
		{[]string{"--log-level", "loud"}, []string{"log-level"}},
		{[]string{"extra"}, []string{"unexpected argument"}},
		{[]string{"--execution-duration", "1s"}, []string{"--execution-duration needs --execution"}},
		{[]string{"--execution", "--execution-failure-rate", "1.1"}, []string{"execution-failure-rate", "probability"}},
		{[]string{"--execution", "--execution-queue-delay", "-1s"}, []string{"--execution-queue-delay must not be negative"}},
		{[]string{"--execution", "--execution-duration", "2s", "--execution-duration-max", "1s"}, []string{"--execution-duration-max must be 0 or at least"}},
		{[]string{"--retry-limit", "-1"}, []string{"--retry-limit must be an integer >= 0"}},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		_, err := parseFlags(tt.args, &out)
		if err == nil {
			t.Errorf("%v: no error", tt.args)
			continue
		}
		text := err.Error() + out.String()
		for _, w := range tt.want {
			if !strings.Contains(text, w) {
				t.Errorf("%v: error %q (output %q) lacks %q", tt.args, err, out.String(), w)
			}
		}
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"listen", "secret-id", "secret-key", "token", "rate", "fault-internal-error", "fault-throttle",
		"fault-commit-then-fail", "fault-commit-then-fail-modes", "fault-commit-then-fail-random", "fault-latency",
		"fault-latency-p", "fault-actions", "describe-lag", "describe-lag-max", "describe-reorder", "seed", "known-applications", "known-environments", "known-projects",
		"known-tables", "max-skew", "hang-timeout", "log-level", "calls/s", "omics-sim listening on HOST:PORT",
		"execution", "execution-queue-delay", "execution-duration", "execution-duration-max", "execution-failure-rate",
		"execution-failure-message", "retry-limit"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("--help lacks %q", name)
		}
	}
}

func TestFlagsBuildOptions(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"--rate", "0", "--fault-commit-then-fail", "0.25", "--fault-commit-then-fail-modes", "hang,drop",
		"--fault-latency", "250ms", "--fault-latency-p", "0.5", "--known-tables", "tab-1, tab-2", "--fault-actions", "RunApplication",
		"--describe-lag", "2s", "--describe-lag-max", "5s", "--describe-reorder"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	if o.Rate != 0 || o.Faults.CommitThenFailP != 0.25 || len(o.Faults.CommitThenFailModes) != 2 ||
		o.Faults.CommitThenFailModes[0] != sandbox.CommitFailHang || o.Faults.Latency != 250*time.Millisecond ||
		o.Faults.LatencyP != 0.5 || len(o.KnownTables) != 2 || o.KnownTables[1] != "tab-2" || o.KnownApplications != nil ||
		len(o.Faults.Actions) != 1 || cfg.listen != "127.0.0.1:9100" || o.SecretID != sandbox.DefaultSecretID ||
		o.Visibility != (sandbox.Visibility{Lag: 2 * time.Second, LagMax: 5 * time.Second, ReorderPages: true}) {
		t.Errorf("options = %+v, listen %s", o, cfg.listen)
	}
	if _, err := sandbox.New(o); err != nil {
		t.Errorf("sandbox.New rejects parsed options: %v", err)
	}
}

func TestExecutionFlagsBuildOptions(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"--execution", "--execution-queue-delay", "1s", "--execution-duration", "2s",
		"--execution-duration-max", "5s", "--execution-failure-rate", "0.2", "--execution-failure-message", "OOM, exit 137",
		"--execution-failure-message", "disk full", "--retry-limit", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.opts.Execution
	if !e.Enabled || e.QueueDelay != time.Second || e.DurationMin != 2*time.Second || e.DurationMax != 5*time.Second ||
		e.FailureRate != 0.2 || len(e.FailureMessages) != 2 || e.FailureMessages[0] != "OOM, exit 137" || e.RetryLimit != 2 {
		t.Errorf("execution = %+v", e)
	}
	if _, err := sandbox.New(cfg.opts); err != nil {
		t.Errorf("sandbox.New rejects parsed options: %v", err)
	}
	cfg, err = parseFlags(nil, io.Discard)
	if err != nil || cfg.opts.Execution.Enabled {
		t.Errorf("default: err %v, execution %+v; want off", err, cfg.opts.Execution)
	}
}
