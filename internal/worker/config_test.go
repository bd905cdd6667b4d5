package worker

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/retry"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// Every invalid setting stops the worker before it does anything, with an
// error that names the setting (the flag, and the environment variable when
// that is where the value came from) and what it accepts.
func TestConfigRejectsBadSettingsNamingThem(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want []string // every one must appear in the error
	}{
		{"negative rate", []string{"--rate", "-1"}, nil, []string{"--rate", ">= 0"}},
		{"unknown limiter scope", []string{"--rate-limit-scope", "regional"}, nil, []string{"--rate-limit-scope", "global or local", `"regional"`}},
		{"unknown log format", []string{"--log-format", "xml"}, nil, []string{"--log-format", "text or json"}},
		{"unknown log level", []string{"--log-level", "verbose"}, nil, []string{"--log-level", "debug, info, warn or error"}},
		{"zero concurrency from the environment", nil, map[string]string{"OMICSQ_CONCURRENCY": "0"}, []string{"--concurrency", "OMICSQ_CONCURRENCY", "between 1 and 1024"}},
		{"concurrency too high", []string{"--concurrency", "2000"}, nil, []string{"--concurrency", "between 1 and 1024"}},
		{"endpoint with a scheme", []string{"--endpoint", "https://x"}, nil, []string{"--endpoint", "host[:port] without a scheme"}},
		{"client certificate without key", []string{"--nats-cert", "/etc/nats/tls.crt"}, nil, []string{"--nats-cert", "--nats-key", "together"}},
		{"client key without certificate", []string{"--nats-key", "/etc/nats/tls.key"}, nil, []string{"--nats-cert", "--nats-key", "together"}},
		{"creds and nkey", []string{"--nats-creds", "a.creds", "--nats-nkey", "b.nk"}, nil, []string{"--nats-creds", "--nats-nkey", "mutually exclusive"}},
		{"user without password", []string{"--nats-user", "worker"}, nil, []string{"--nats-user", "--nats-password", "together"}},
		{"two stream replicas", []string{"--stream-replicas", "2"}, nil, []string{"--stream-replicas", "1, 3 or 5"}},
		{"two stream replicas from the environment", nil, map[string]string{"OMICSQ_STREAM_REPLICAS": "2"}, []string{"--stream-replicas", "OMICSQ_STREAM_REPLICAS", "1, 3 or 5"}},
		{"ack wait under a second", []string{"--ack-wait", "500ms", "--api-timeout", "1s"}, nil, []string{"--ack-wait", "at least 1s"}},
		{"api timeout under a second", []string{"--api-timeout", "500ms"}, nil, []string{"--api-timeout", "at least 1s"}},
		{"zero burst", []string{"--burst", "0"}, nil, []string{"--burst", ">= 1"}},
		{"limiter guard too long", []string{"--rate-limit-guard", "2s"}, nil, []string{"--rate-limit-guard", "between 0 and 1s"}},
		{"no region", []string{"--region="}, nil, []string{"--region", "must be set"}},
		{"negative sandbox rate", []string{"--sandbox-rate", "-1"}, nil, []string{"--sandbox-rate", ">= 0"}},
		{"sandbox run time backwards", []string{"--sandbox-run-time", "60s-10s"}, nil, []string{"--sandbox-run-time", "MIN <= MAX", "60s-10s"}},
		{"sandbox run time not a duration", nil, map[string]string{"OMICSQ_SANDBOX_RUN_TIME": "10-60"}, []string{"--sandbox-run-time", "OMICSQ_SANDBOX_RUN_TIME", "10s-60s"}},
		{"sandbox failure rate over 1", []string{"--sandbox-failure-rate", "1.5"}, nil, []string{"--sandbox-failure-rate", "between 0 and 1"}},
		{"negative sandbox queue time", []string{"--sandbox-queue-time", "-1s"}, nil, []string{"--sandbox-queue-time", "negative"}},
		{"no lookup horizon", []string{"--lookup-horizon", "0s"}, nil, []string{"--lookup-horizon", "at least 1s"}},
		{"negative auto-retry", []string{"--auto-retry", "-1"}, nil, []string{"--auto-retry", ">= 0"}},
		{"auto-retry without messages", []string{"--auto-retry", "2"}, nil, []string{"--auto-retry-messages", "must be set"}},
		{"auto-retry with a bad expression", []string{"--auto-retry", "2", "--auto-retry-messages", "OOM("}, nil, []string{"--auto-retry-messages", "regular expression"}},
		{"auto-retry without the tracker", nil, map[string]string{"OMICSQ_AUTO_RETRY": "1", "OMICSQ_AUTO_RETRY_MESSAGES": "OOM", "OMICSQ_TRACKER": "false"}, []string{"--auto-retry", "OMICSQ_AUTO_RETRY", "needs --tracker"}},
		{"lease too short", []string{"--lease-ttl", "1s"}, nil, []string{"--lease-ttl", "at least 3s"}},
		{"dlq kept longer than the ledger", []string{"--dlq-max-age", "1200h", "--ledger-ttl", "960h"}, nil, []string{"--ledger-ttl", "--dlq-max-age"}},
		{"dlq kept forever, ledger not", []string{"--dlq-max-age", "0s"}, nil, []string{"--ledger-ttl", "--dlq-max-age"}},
		{"results kept longer than the ledger", []string{"--results-max-age", "1000h", "--ledger-ttl", "900h"}, nil, []string{"--ledger-ttl", "--results-max-age"}},
		{"no drain", []string{"--drain-timeout", "0s"}, nil, []string{"--drain-timeout", "at least 1s"}},
		{"metrics address without port", []string{"--metrics-addr", "9464"}, nil, []string{"--metrics-addr", "HOST:PORT or empty"}},
		{"embedded listen without host", []string{"--embedded-listen", "4222"}, nil, []string{"--embedded-listen", "HOST:PORT"}},
		{"no store dir", []string{"--store-dir="}, nil, []string{"--store-dir", "must not be empty"}},
		{"no worker id", []string{"--worker-id="}, nil, []string{"--worker-id", "must not be empty"}},
		{"zero message size", []string{"--max-message-bytes", "0"}, nil, []string{"--max-message-bytes", ">= 1"}},
		{"one delivery", []string{"--max-deliver", "1"}, nil, []string{"--max-deliver", "at least 2"}},
		{"no ack pending", []string{"--max-ack-pending", "0"}, nil, []string{"--max-ack-pending", ">= 1"}},
		{"ledger shorter than results", []string{"--ledger-ttl", "24h"}, nil, []string{"--ledger-ttl", "--results-max-age"}},
		{"no attempts", []string{"--max-attempts", "0"}, nil, []string{"--max-attempts", ">= 1"}},
		{"no initial delay", []string{"--retry-initial", "0s"}, nil, []string{"--retry-initial", "> 0"}},
		{"max interval below initial", []string{"--retry-max-interval", "100ms"}, nil, []string{"--retry-max-interval", "--retry-initial"}},
		{"no retry time", []string{"--max-retry-elapsed", "0s"}, nil, []string{"--max-retry-elapsed", "> 0"}},
		{"no probe interval", []string{"--pause-probe-interval", "0s"}, nil, []string{"--pause-probe-interval", "> 0"}},
		{"negative unreachable", []string{"--unreachable-after", "-1s"}, nil, []string{"--unreachable-after", "> 0"}},
		{"requests that age out", []string{"--requests-max-age", "336h"}, nil, []string{"--requests-max-age", "must be 0"}},
		{"negative dlq age", []string{"--dlq-max-age", "-1h"}, nil, []string{"--dlq-max-age", ">= 0"}},
		{"dedup window beyond the dlq age", []string{"--duplicate-window", "48h", "--dlq-max-age", "24h"}, nil, []string{"--duplicate-window", "--dlq-max-age"}},
		{"empty stream name", []string{"--requests-stream="}, nil, []string{"--requests-stream", "must not be empty"}},
		{"non-number in the environment", nil, map[string]string{"OMICSQ_CONCURRENCY": "sixteen"}, []string{"OMICSQ_CONCURRENCY", "--concurrency", "an integer"}},
		{"duration without unit in the environment", nil, map[string]string{"OMICSQ_API_TIMEOUT": "30"}, []string{"OMICSQ_API_TIMEOUT", "--api-timeout", "duration"}},
		{"non-boolean in the environment", nil, map[string]string{"OMICSQ_SANDBOX": "yes"}, []string{"OMICSQ_SANDBOX", "--sandbox", "true or false"}},
		{"non-number rate in the environment", nil, map[string]string{"OMICSQ_RATE": "fast"}, []string{"OMICSQ_RATE", "--rate", "a number"}},
		{"positional argument", []string{"extra"}, nil, []string{"unexpected arguments"}},
		{"several at once", []string{"--rate", "-1", "--log-format", "xml"}, nil, []string{"--rate", "--log-format"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseConfig(c.args, envOf(c.env), io.Discard)
			if err == nil {
				t.Fatalf("parseConfig(%q, %v) accepted an invalid setting", c.args, c.env)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// A value that is not of the flag's type, given on the command line, is
// refused by the flag package, which names the flag and prints the usage
// with every flag's type.
func TestConfigCommandLineParseErrorShowsUsage(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"--concurrency", "sixteen"}, envOf(nil), &out)
	if err == nil || !strings.Contains(err.Error(), "-concurrency") {
		t.Fatalf("error %v does not name -concurrency", err)
	}
	if !strings.Contains(out.String(), "-concurrency int") {
		t.Errorf("the usage printed on a parse error does not show the accepted type:\n%s", out.String())
	}
	if _, err := parseConfig([]string{"--help"}, envOf(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help = %v, want flag.ErrHelp", err)
	}
}

// Errors never repeat credentials, whatever else is wrong.
func TestConfigErrorsNeverRepeatSecrets(t *testing.T) {
	env := map[string]string{"NATS_PASSWORD": "pw-Secret-9Kq", "NATS_TOKEN": "tok-Secret-3Zx", "OMICSQ_CONCURRENCY": "x-Secret-5Mn"}
	for _, args := range [][]string{nil, {"--nats-user="}, {"--rate", "-1"}} {
		_, err := parseConfig(args, envOf(env), io.Discard)
		if err == nil {
			t.Fatalf("parseConfig(%q) accepted a bad configuration", args)
		}
		if strings.Contains(err.Error(), "Secret-") {
			t.Errorf("error %q repeats a secret or a raw environment value", err)
		}
	}
}

// The defaults parse, are the documented ones, and bind every listener to
// loopback.
func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, envOf(nil), io.Discard)
	if err != nil {
		t.Fatalf("the defaults do not parse: %v", err)
	}
	wantTopo := queue.DefaultTopology()
	wantTopo.MaxDeliver = 20 // the worker's documented default
	if c.Topology != wantTopo {
		t.Errorf("topology %+v, want %+v", c.Topology, wantTopo)
	}
	if c.Retry != retry.DefaultPolicy() || c.Limits != submit.DefaultLimits() {
		t.Errorf("retry %+v, limits %+v; want the packages' defaults", c.Retry, c.Limits)
	}
	if c.Concurrency != 32 || c.Rate != 20 || c.Burst != 1 || c.RateLimitScope != "global" || c.APITimeout != 5*time.Second || c.LeaseTTL != 6*time.Second ||
		c.Endpoint != "omics.tencentcloudapi.com" || c.InsecureHTTP || c.Sandbox || !c.Provision || c.Region != "ap-guangzhou" ||
		c.LogFormat != "text" || c.LogLevel != "info" || c.NATS.URLs != "" || c.WorkerID == "" {
		t.Errorf("unexpected defaults: %+v", c)
	}
	// Sandbox mode's runs execute by default, briefly, and succeed.
	wantExec := sandbox.Execution{Enabled: true, QueueDelay: 2 * time.Second, DurationMin: 5 * time.Second, DurationMax: 20 * time.Second}
	if e := c.sandboxExecution; e.Enabled != wantExec.Enabled || e.QueueDelay != wantExec.QueueDelay ||
		e.DurationMin != wantExec.DurationMin || e.DurationMax != wantExec.DurationMax || e.FailureRate != 0 {
		t.Errorf("sandbox execution %+v, want %+v", e, wantExec)
	}
	for arg, want := range map[string]sandbox.Execution{
		"off": {}, "30s": {Enabled: true, DurationMin: 30 * time.Second, DurationMax: 30 * time.Second},
		"1m-2h": {Enabled: true, DurationMin: time.Minute, DurationMax: 2 * time.Hour},
	} {
		got, err := parseRunTime(arg)
		if err != nil || got.Enabled != want.Enabled || got.DurationMin != want.DurationMin || got.DurationMax != want.DurationMax {
			t.Errorf("--sandbox-run-time %s: %+v, %v; want %+v", arg, got, err, want)
		}
	}
	for name, addr := range map[string]string{"--embedded-listen": c.EmbeddedListen, "--metrics-addr": c.MetricsAddr, "--sandbox-listen": c.SandboxListen} {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			t.Errorf("%s defaults to %q, not a loopback address", name, addr)
		}
	}
	// Boundary values are accepted.
	for _, args := range [][]string{
		{"--rate", "0"}, {"--concurrency", "1024"}, {"--stream-replicas", "3"}, {"--stream-replicas", "5"},
		{"--ack-wait", "11s", "--api-timeout", "30s"}, {"--log-format", "json"}, {"--rate-limit-scope", "local"},
		{"--endpoint", "omics.intl.tencentcloudapi.com:443"}, {"--metrics-addr="}, {"--sandbox", "--region="},
		{"--nats-cert", "c.pem", "--nats-key", "k.pem"}, {"--nats-user", "u", "--nats-password", "p"},
		{"--requests-max-age", "0s"}, {"--duplicate-window", "24h", "--dlq-max-age", "24h"}, {"--ledger-ttl", "0s", "--dlq-max-age", "0s", "--results-max-age", "0s"},
	} {
		if _, err := parseConfig(args, envOf(nil), io.Discard); err != nil {
			t.Errorf("parseConfig(%q) = %v, want it accepted", args, err)
		}
	}
}

// The environment sets every setting, and a flag overrides it, even when
// the environment's value alone would be invalid.
func TestConfigFlagWinsOverEnvironment(t *testing.T) {
	env := map[string]string{"OMICSQ_CONCURRENCY": "8", "OMICSQ_RATE": "5", "LOG_FORMAT": "json", "OMICSQ_SANDBOX": "true", "OMICSQ_API_TIMEOUT": "10s"}
	c, err := parseConfig(nil, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 8 || c.Rate != 5 || c.LogFormat != "json" || !c.Sandbox || c.APITimeout != 10*time.Second {
		t.Errorf("the environment was not applied: %+v", c)
	}
	c, err = parseConfig([]string{"--concurrency", "4", "--sandbox=false", "--api-timeout", "20s"}, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 4 || c.Sandbox || c.APITimeout != 20*time.Second || c.Rate != 5 {
		t.Errorf("flags did not win over the environment: concurrency %d sandbox %v api timeout %v rate %v", c.Concurrency, c.Sandbox, c.APITimeout, c.Rate)
	}
	c, err = parseConfig([]string{"--concurrency", "4"}, envOf(map[string]string{"OMICSQ_CONCURRENCY": "0"}), io.Discard)
	if err != nil || c.Concurrency != 4 {
		t.Errorf("a valid flag over an invalid environment value: %v, %v", c, err)
	}
}
