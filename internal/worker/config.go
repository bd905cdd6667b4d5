package worker

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/lanes"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/retry"
	"github.com/omicsq/omicsq/internal/settings"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/tracker"
	"github.com/omicsq/omicsq/sandbox"
)

// config is every worker setting. Each one is a flag and an environment
// variable (the flag wins); flagTable below is the single table that
// defines them, their defaults and their documentation.
type config struct {
	// NATS is the connection; an empty URLs starts the embedded server.
	NATS           natsconn.Options
	StoreDir       string
	EmbeddedListen string

	Sandbox       bool
	SandboxListen string
	SandboxRate   int
	// SandboxRunTime, SandboxQueueTime and SandboxFailureRate configure the
	// sandbox's execution model; sandboxExecution is what they parse to.
	SandboxRunTime     string
	SandboxQueueTime   time.Duration
	SandboxFailureRate float64
	sandboxExecution   sandbox.Execution
	Endpoint           string
	InsecureHTTP       bool
	Region             string
	APITimeout         time.Duration

	Concurrency    int
	Rate           float64
	Burst          int
	RateLimitScope string
	RateLimitGuard time.Duration
	QuotaAccount   string

	Provision bool
	Topology  queue.Topology

	Retry         retry.Policy
	LookupHorizon time.Duration
	LeaseTTL      time.Duration
	Limits        submit.Limits

	BreakerWindow    time.Duration
	BreakerThreshold int
	BreakerHold      time.Duration
	MaxPauseStrikes  int

	PauseProbeInterval time.Duration
	UnreachableAfter   time.Duration
	DrainTimeout       time.Duration

	// The run tracker (internal/tracker); Topology.Tracker turns it on.
	TrackerShare    float64
	TrackerInterval time.Duration
	TrackerLeaseTTL time.Duration
	TrackerProjects string

	// Priority lanes and fair flows (internal/lanes); Topology.Lanes turns
	// them on, lanes is what the rest parse to.
	LaneMinShares   string
	LaneWindow      int
	FairnessWeights string
	LaneRefresh     time.Duration
	lanes           lanes.Config

	// The opt-in auto-retry policy (internal/rerun); 0 is off.
	AutoRetry         int
	AutoRetryMessages string

	MetricsAddr string
	LogFormat   string
	LogLevel    string
	WorkerID    string
}

// setting is a row of the worker's own part of the table: a
// settings.Setting, but local so that rows may be written unkeyed, as a
// table (vet asks for keys in other packages' struct literals).
type setting settings.Setting

// own turns the worker's rows into settings.
func own(rows []setting) []settings.Setting {
	out := make([]settings.Setting, len(rows))
	for i, r := range rows {
		out[i] = settings.Setting(r)
	}
	return out
}

// flagTable is every setting bound to c, in the README's order; the rows
// shared with enqueue come from package settings.
func flagTable(c *config) []settings.Setting {
	requests, outcomes := settings.Topology(&c.Topology.Topology, "requests-subject")
	consumer := own([]setting{
		{"consumer", "OMICSQ_CONSUMER", "durable consumer shared by the workers", settings.String(&c.Topology.Consumer, queue.DefaultTopology().Consumer)},
	})
	return slices.Concat(
		settings.NATS(&c.NATS, "", "NATS server or cluster URLs, comma-separated; empty starts an embedded JetStream server"),
		serverRows(c),
		requests, consumer, outcomes,
		storageRows(c),
		retryRows(c),
		[]settings.Setting{settings.MessageLimit(&c.Limits)},
		operationRows(c),
		trackerRows(c),
		autoRetryRows(c),
		laneRows(c),
	)
}

// serverRows configure the embedded server, the API and the rate limit.
func serverRows(c *config) []settings.Setting {
	str, boolean, integer, dur := settings.String, settings.Bool, settings.Int, settings.Duration
	server := own([]setting{
		{"store-dir", "OMICSQ_STORE_DIR", "embedded server: JetStream store directory (persistent)", str(&c.StoreDir, ".omicsq/jetstream")},
		{"embedded-listen", "OMICSQ_EMBEDDED_LISTEN", "embedded server: client listen address (loopback unless told otherwise)", str(&c.EmbeddedListen, "127.0.0.1:4222")},

		{"sandbox", "OMICSQ_SANDBOX", "submit to an in-process sandbox Omics API instead of Tencent Cloud (no credentials)", boolean(&c.Sandbox, false)},
		{"sandbox-listen", "OMICSQ_SANDBOX_LISTEN", "sandbox: listen address of the in-process sandbox API", str(&c.SandboxListen, "127.0.0.1:0")},
		{"sandbox-rate", "OMICSQ_SANDBOX_RATE", "sandbox: calls per second per action it admits (0: unlimited)", integer(&c.SandboxRate, 20)},
		{"sandbox-run-time", "OMICSQ_SANDBOX_RUN_TIME", "sandbox: how long each run executes before it ends, MIN-MAX (drawn uniformly, e.g. 10s-60s) or one duration; off: runs stay Pending and the tracker has nothing to follow", str(&c.SandboxRunTime, "5s-20s")},
		{"sandbox-queue-time", "OMICSQ_SANDBOX_QUEUE_TIME", "sandbox: how long each run stays Pending before it runs", dur(&c.SandboxQueueTime, 2*time.Second)},
		{"sandbox-failure-rate", "OMICSQ_SANDBOX_FAILURE_RATE", "sandbox: probability that a run ends Failed (with the sandbox's error message) instead of Succeeded", settings.Float(&c.SandboxFailureRate, 0)},
	})
	limits := own([]setting{
		{"concurrency", "OMICSQ_CONCURRENCY", "messages processed at once by this replica: enough that calls hanging until --api-timeout do not starve the limiter (see docs/reliability.md)", integer(&c.Concurrency, 32)},
		{"rate", "OMICSQ_RATE", "API calls per second per action, shared by every replica (0: unlimited)", settings.Float(&c.Rate, 20)},
		{"burst", "OMICSQ_BURST", "calls that may be sent back to back", integer(&c.Burst, 1)},
		{"rate-limit-scope", "OMICSQ_RATE_LIMIT_SCOPE", "global (shared through NATS by every replica) or local (this process only)", str(&c.RateLimitScope, "global")},
		{"quota-account", "OMICSQ_QUOTA_ACCOUNT", "global limiter: the Tencent Cloud account (e.g. its UIN) whose quota the fleet shares; empty: derived from the SecretId or role (hashed), so two keys of one account should set it", str(&c.QuotaAccount, "")},
		{"rate-limit-guard", "OMICSQ_RATE_LIMIT_GUARD", "global limiter: margin added to the 1 s window for network jitter and clock skew", dur(&c.RateLimitGuard, 20*time.Millisecond)},

		{"provision", "OMICSQ_PROVISION", "create or update streams, consumer and buckets at start; false binds to existing ones (e.g. managed by NACK)", boolean(&c.Provision, true)},
	})
	return slices.Concat(server, settings.API(&c.Endpoint, &c.InsecureHTTP, &c.Region, &c.APITimeout), limits)
}

// storageRows name and size the worker's own streams, buckets and consumer.
func storageRows(c *config) []settings.Setting {
	str, integer, dur := settings.String, settings.Int, settings.Duration
	t := queue.DefaultTopology()
	return own([]setting{
		{"advisory-stream", "OMICSQ_ADVISORY_STREAM", "stream capturing max-deliveries advisories", str(&c.Topology.AdvisoryStream, t.AdvisoryStream)},
		setting(settings.LedgerBucket(&c.Topology.LedgerBucket, t.LedgerBucket, "")),
		{"control-bucket", "OMICSQ_CONTROL_BUCKET", "KV bucket of the fleet-wide pause flag", str(&c.Topology.ControlBucket, t.ControlBucket)},
		setting(settings.BreakerBucket(&c.Topology.BreakerBucket, t.BreakerBucket)),
		{"stream-replicas", "OMICSQ_STREAM_REPLICAS", "replicas of every stream and bucket (1, 3 or 5)", integer(&c.Topology.Replicas, t.Replicas)},
		{"requests-max-age", "OMICSQ_REQUESTS_MAX_AGE", "must be 0: a request is kept until it has an outcome, however long the fleet is paused", dur(&c.Topology.RequestsMaxAge, t.RequestsMaxAge)},
		{"results-max-age", "OMICSQ_RESULTS_MAX_AGE", "how long results are kept", dur(&c.Topology.ResultsMaxAge, t.ResultsMaxAge)},
		{"dlq-max-age", "OMICSQ_DLQ_MAX_AGE", "how long dead letters are kept (at most --ledger-ttl)", dur(&c.Topology.DLQMaxAge, t.DLQMaxAge)},
		{"ledger-ttl", "OMICSQ_LEDGER_TTL", "how long ledger entries are kept (at least --results-max-age and --dlq-max-age)", dur(&c.Topology.LedgerTTL, t.LedgerTTL)},
		{"duplicate-window", "OMICSQ_DUPLICATE_WINDOW", "JetStream de-duplication window of published requests", dur(&c.Topology.DuplicateWindow, t.DuplicateWindow)},
		{"ack-wait", "OMICSQ_ACK_WAIT", "redelivery timeout of a message whose worker went silent", dur(&c.Topology.AckWait, t.AckWait)},
		{"max-deliver", "OMICSQ_MAX_DELIVER", "deliveries of one message not handed back on purpose (crashes) before it is dead-lettered", integer(&c.Topology.MaxDeliver, t.MaxDeliver)},
		{"max-ack-pending", "OMICSQ_MAX_ACK_PENDING", "messages delivered but unacknowledged across the fleet", integer(&c.Topology.MaxAckPending, t.MaxAckPending)},
	})
}

// retryRows bound retries, lookups and leases.
func retryRows(c *config) []settings.Setting {
	integer, dur := settings.Int, settings.Duration
	r := retry.DefaultPolicy()
	return own([]setting{
		{"max-attempts", "OMICSQ_MAX_ATTEMPTS", "attempts of a request on throttling or InternalError before it is dead-lettered", integer(&c.Retry.MaxAttempts, r.MaxAttempts)},
		{"max-retry-elapsed", "OMICSQ_MAX_RETRY_ELAPSED", "active retrying (backoff delays, not time paused) after which retries stop", dur(&c.Retry.MaxElapsed, r.MaxElapsed)},
		{"retry-initial", "OMICSQ_RETRY_INITIAL", "mean delay before the first retry (exponential, jittered)", dur(&c.Retry.InitialInterval, r.InitialInterval)},
		{"retry-max-interval", "OMICSQ_RETRY_MAX_INTERVAL", "cap of a single retry delay", dur(&c.Retry.MaxInterval, r.MaxInterval)},
		{"lookup-horizon", "OMICSQ_LOOKUP_HORIZON", "how long a created run group may take to become visible to DescribeRunGroups: after a DuplicateName, lookups that find nothing are repeated until it", dur(&c.LookupHorizon, 5*time.Minute)},
		{"lease-ttl", "OMICSQ_LEASE_TTL", "how long a worker's hold on a request lasts without renewal (a crashed worker's requests are free again after it)", dur(&c.LeaseTTL, 6*time.Second)},
	})
}

// operationRows set breakers, pauses, shutdown, metrics and logs.
func operationRows(c *config) []settings.Setting {
	str, integer, dur := settings.String, settings.Int, settings.Duration
	host, _ := os.Hostname()
	if host == "" {
		host = "worker"
	}
	return own([]setting{
		{"max-pause-strikes", "OMICSQ_MAX_PAUSE_STRIKES", "a request whose own calls paused a running fleet this often is parked in the DLQ (pause_limit; 0: never)", integer(&c.MaxPauseStrikes, 3)},
		{"breaker-threshold", "OMICSQ_BREAKER_THRESHOLD", "distinct requests rejected with the same code for the same resource within --breaker-window that open its breaker (0: off)", integer(&c.BreakerThreshold, 5)},
		{"breaker-window", "OMICSQ_BREAKER_WINDOW", "window of the breaker count; a rejected request waits this long before it is dead-lettered, in case its resource's breaker opens", dur(&c.BreakerWindow, time.Minute)},
		{"breaker-hold", "OMICSQ_BREAKER_HOLD", "how often a request held by an open breaker is looked at again (no call is made)", dur(&c.BreakerHold, 30*time.Second)},
		{"pause-probe-interval", "OMICSQ_PAUSE_PROBE_INTERVAL", "while paused on a systemic failure, time between probes of the API", dur(&c.PauseProbeInterval, 30*time.Second)},
		{"unreachable-after", "OMICSQ_UNREACHABLE_AFTER", "transport failures lasting this long pause the fleet", dur(&c.UnreachableAfter, 2*time.Minute)},
		{"drain-timeout", "OMICSQ_DRAIN_TIMEOUT", "on SIGTERM, time in-flight messages get to finish before they are released", dur(&c.DrainTimeout, 25*time.Second)},

		{"metrics-addr", "METRICS_ADDR", "listen address of /metrics, /healthz and /readyz (empty: off)", str(&c.MetricsAddr, "127.0.0.1:9464")},
		{"log-format", "LOG_FORMAT", "text or json", str(&c.LogFormat, "text")},
		{"log-level", "LOG_LEVEL", "debug, info, warn or error", str(&c.LogLevel, "info")},
		{"worker-id", "OMICSQ_WORKER_ID", "this replica's name in results, dead letters and logs", str(&c.WorkerID, host)},
	})
}

// trackerRows configure the run tracker and its lifecycle events.
func trackerRows(c *config) []settings.Setting {
	str, dur := settings.String, settings.Duration
	t := queue.DefaultTopology()
	return own([]setting{
		{"tracker", "OMICSQ_TRACKER", "run the run tracker: one replica (leader-elected) follows every run group to a terminal status and publishes lifecycle events (docs/lifecycle.md)", settings.Bool(&c.Topology.Tracker, t.Tracker)},
		{"tracker-share", "OMICSQ_TRACKER_SHARE", "share of the Describe rate (--rate, per action) the tracker may spend; the rest is left to reconciliation", settings.Float(&c.TrackerShare, tracker.DefaultShare)},
		{"tracker-interval", "OMICSQ_TRACKER_INTERVAL", "time between the starts of the tracker's poll cycles", dur(&c.TrackerInterval, tracker.DefaultInterval)},
		{"tracker-lease-ttl", "OMICSQ_TRACKER_LEASE_TTL", "lifetime of the tracker's leadership lease without renewal; another replica takes over within about twice this", dur(&c.TrackerLeaseTTL, tracker.DefaultLeaseTTL)},
		{"tracker-projects", "OMICSQ_TRACKER_PROJECTS", "ProjectIds, comma-separated, whose run groups the tracker follows besides the default project's", str(&c.TrackerProjects, "")},
		{"runs-bucket", "OMICSQ_RUNS_BUCKET", "KV bucket of the tracker: the run groups followed and the events published", str(&c.Topology.RunsBucket, t.RunsBucket)},
		{"tracker-consumer", "OMICSQ_TRACKER_CONSUMER", "durable consumer through which the tracker reads the results stream", str(&c.Topology.TrackerConsumer, t.TrackerConsumer)},
	})
}

// autoRetryRows configure the opt-in retries of failed run groups.
func autoRetryRows(c *config) []settings.Setting {
	return own([]setting{
		{"retries-bucket", "OMICSQ_RETRIES_BUCKET", "KV bucket of the retries of failed run groups (enqueue runs retry and --auto-retry): the intent before every RetryRuns call", settings.String(&c.Topology.RetriesBucket, queue.DefaultTopology().RetriesBucket)},
		{"auto-retry", "OMICSQ_AUTO_RETRY", "retry a failed run group whose error message matches --auto-retry-messages with RetryRuns (call cache on), until the key's retries created this many groups (0: off; needs --tracker)", settings.Int(&c.AutoRetry, 0)},
		{"auto-retry-messages", "OMICSQ_AUTO_RETRY_MESSAGES", "Go regular expression (RE2) the ErrorMessage of a failed run group must match to be retried by --auto-retry, e.g. 'OOMKilled|disk quota'", settings.String(&c.AutoRetryMessages, "")},
	})
}

// laneRows configure the priority lanes and the fairness between keys.
func laneRows(c *config) []settings.Setting {
	return own([]setting{
		{"lanes", "OMICSQ_LANES", "priority lanes and fair flows: requests published to <requests-subject>.<urgent|normal|routine>.<fairness token> are scheduled fleet-wide by lane and fairness key (docs/design.md); false: only the bare subject, one consumer", settings.Bool(&c.Topology.Lanes, true)},
		{"lane-min-shares", "OMICSQ_LANE_MIN_SHARES", "share of the last --lane-window calls guaranteed to a lower lane with backlog, LANE=SHARE comma-separated (normal, routine)", settings.String(&c.LaneMinShares, "normal=0.10,routine=0.05")},
		{"lane-window", "OMICSQ_LANE_WINDOW", "how many of the fleet's last calls the lanes' shares are counted over", settings.Int(&c.LaneWindow, 100)},
		{"fairness-weights", "OMICSQ_FAIRNESS_WEIGHTS", "weights of fairness keys (ProjectId or Omicsq-Fairness-Key) within a lane, KEY=WEIGHT comma-separated; other=WEIGHT sets every other key's (default 1)", settings.String(&c.FairnessWeights, "")},
		{"lane-refresh", "OMICSQ_LANE_REFRESH", "how old each replica's view of the flows' backlog may get before it reads it again", settings.Duration(&c.LaneRefresh, 200*time.Millisecond)},
	})
}

// checkLanes parses the lane settings into c.lanes.
func (c *config) checkLanes(p *problems) {
	cfg := lanes.DefaultConfig()
	cfg.Window = c.LaneWindow
	cfg.MinShare = [lanes.Lanes]float64{}
	for _, kv := range splitList(c.LaneMinShares) {
		k, v, _ := strings.Cut(kv, "=")
		l := lanes.LaneIndex(client.Priority(strings.TrimSpace(k)))
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if l < 1 || err != nil {
			p.bad("lane-min-shares", "must be LANE=SHARE pairs of normal or routine and a number, got %q", kv)
			continue
		}
		cfg.MinShare[l] = f
	}
	for _, kv := range splitList(c.FairnessWeights) {
		k, v, _ := strings.Cut(kv, "=")
		w, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if strings.TrimSpace(k) == "" || err != nil || w <= 0 {
			p.bad("fairness-weights", "must be KEY=WEIGHT pairs with positive weights (the keys are not repeated here)")
			continue
		}
		if k = strings.TrimSpace(k); k == "other" {
			cfg.DefaultWeight = w
			continue
		}
		if cfg.Weights == nil {
			cfg.Weights = map[string]float64{}
		}
		cfg.Weights[client.KeyToken(k)] = w
	}
	if err := cfg.Validate(); err != nil {
		p.bad("lane-min-shares", "%v", err)
	}
	if c.LaneRefresh < 10*time.Millisecond || c.LaneRefresh > 10*time.Second {
		p.bad("lane-refresh", "must be 10ms to 10s, got %v", c.LaneRefresh)
	}
	c.lanes = cfg
}

// fairnessNames maps the tokens of the keys named in --fairness-weights
// back to the keys: the operator chose to name them, so metrics may.
func (c *config) fairnessNames() map[string]string {
	out := map[string]string{}
	for _, kv := range splitList(c.FairnessWeights) {
		k, _, _ := strings.Cut(kv, "=")
		if k = strings.TrimSpace(k); k != "" && k != "other" {
			out[client.KeyToken(k)] = k
		}
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// trackerProjects is --tracker-projects as a list.
func (c *config) trackerProjects() []string {
	var out []string
	for _, p := range strings.Split(c.TrackerProjects, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseConfig reads the environment, then the flags, then validates.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{Topology: queue.DefaultTopology(), Retry: retry.DefaultPolicy(), Limits: submit.DefaultLimits()}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: worker [flags]\n\nPulls run requests from NATS JetStream and submits them to Tencent Cloud Omics RunApplication.\nEvery flag can also be set by the environment variable named in its description; the flag wins.\n\n")
		fs.PrintDefaults()
	}
	extra, err := settings.Parse(fs, flagTable(c), args, getenv)
	if err != nil {
		return nil, err
	}
	if len(extra) > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(extra, " "))
	}
	c.Topology.MaxMessageBytes = int32(min(c.Limits.MaxRequestBytes, 64<<20))
	return c, c.validate()
}

// problems collects what is wrong with a configuration, each naming its
// flag and environment variable.
type problems struct {
	envOf map[string]string
	errs  []error
}

func (p *problems) bad(flagName, format string, a ...any) {
	p.errs = append(p.errs, fmt.Errorf("--%s (%s): %s", flagName, p.envOf[flagName], fmt.Sprintf(format, a...)))
}

// validate fails fast, naming the setting and the accepted values.
func (c *config) validate() error {
	p := &problems{envOf: map[string]string{}}
	for _, s := range flagTable(&config{}) {
		p.envOf[s.Flag] = s.Env
	}
	c.checkConnection(p)
	c.checkAPI(p)
	c.checkOperation(p)
	c.checkTopology(p)
	c.checkRetry(p)
	c.checkTracker(p)
	c.checkAutoRetry(p)
	c.checkLanes(p)
	if len(p.errs) == 0 {
		// Backstops for what no flag sets.
		if err := c.Retry.Validate(); err != nil {
			p.errs = append(p.errs, err)
		}
		if err := c.Topology.Validate(); err != nil {
			p.errs = append(p.errs, err)
		}
	}
	return errors.Join(p.errs...)
}

// checkConnection checks the NATS connection and the embedded server.
func (c *config) checkConnection(p *problems) {
	if c.NATS.URLs == "" {
		if _, _, err := net.SplitHostPort(c.EmbeddedListen); err != nil {
			p.bad("embedded-listen", "must be HOST:PORT, got an invalid address")
		}
		if c.StoreDir == "" {
			p.bad("store-dir", "must not be empty when the embedded server is used")
		}
	}
	if (c.NATS.CertFile == "") != (c.NATS.KeyFile == "") {
		p.bad("nats-cert", "and --nats-key must be given together")
	}
	if c.NATS.CredsFile != "" && c.NATS.NKeySeedFile != "" {
		p.bad("nats-creds", "and --nats-nkey are mutually exclusive")
	}
	if (c.NATS.User == "") != (c.NATS.Password == "") {
		p.bad("nats-user", "and --nats-password must be given together")
	}
}

// checkAPI checks the calls: concurrency, rate, timeouts and endpoint.
func (c *config) checkAPI(p *problems) {
	if c.Concurrency < 1 || c.Concurrency > 1024 {
		p.bad("concurrency", "must be between 1 and 1024, got %d", c.Concurrency)
	}
	if c.Rate < 0 {
		p.bad("rate", "must be >= 0 (0 lifts the limit), got %v", c.Rate)
	}
	if c.Burst < 1 {
		p.bad("burst", "must be >= 1, got %d", c.Burst)
	}
	if c.RateLimitScope != "global" && c.RateLimitScope != "local" {
		p.bad("rate-limit-scope", "must be global or local, got %q", c.RateLimitScope)
	}
	if c.RateLimitGuard < 0 || c.RateLimitGuard > time.Second {
		p.bad("rate-limit-guard", "must be between 0 and 1s")
	}
	if c.APITimeout < time.Second {
		p.bad("api-timeout", "must be at least 1s")
	}
	if !c.Sandbox && c.Region == "" {
		p.bad("region", "must be set (e.g. ap-guangzhou)")
	}
	if c.Endpoint == "" || strings.Contains(c.Endpoint, "://") {
		p.bad("endpoint", "must be host[:port] without a scheme")
	}
	if c.SandboxRate < 0 {
		p.bad("sandbox-rate", "must be >= 0")
	}
	c.checkSandbox(p)
	if c.LookupHorizon < time.Second {
		p.bad("lookup-horizon", "must be at least 1s, got %v", c.LookupHorizon)
	}
}

// checkOperation checks breakers, pauses, leases, shutdown, logs, metrics
// and the message limit.
func (c *config) checkOperation(p *problems) {
	if c.MaxPauseStrikes < 0 {
		p.bad("max-pause-strikes", "must be >= 0 (0: never), got %d", c.MaxPauseStrikes)
	}
	if c.BreakerThreshold < 0 {
		p.bad("breaker-threshold", "must be >= 0 (0: off), got %d", c.BreakerThreshold)
	}
	if c.BreakerWindow < time.Second || c.BreakerHold < 100*time.Millisecond {
		p.bad("breaker-window", "must be at least 1s (and --breaker-hold at least 100ms)")
	}
	if c.LeaseTTL < 3*time.Second {
		p.bad("lease-ttl", "must be at least 3s, got %v", c.LeaseTTL)
	}
	if c.DrainTimeout < time.Second {
		p.bad("drain-timeout", "must be at least 1s")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		p.bad("log-format", "must be text or json, got %q", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.bad("log-level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			p.bad("metrics-addr", "must be HOST:PORT or empty")
		}
	}
	if c.WorkerID == "" {
		p.bad("worker-id", "must not be empty")
	}
	if c.Limits.MaxRequestBytes < 1 {
		p.bad("max-message-bytes", "must be >= 1, got %d", c.Limits.MaxRequestBytes)
	}
	if c.PauseProbeInterval <= 0 {
		p.bad("pause-probe-interval", "must be > 0, got %v", c.PauseProbeInterval)
	}
	if c.UnreachableAfter <= 0 {
		p.bad("unreachable-after", "must be > 0, got %v", c.UnreachableAfter)
	}
}

// checkTopology checks the streams, buckets and consumer, named by flag.
func (c *config) checkTopology(p *problems) {
	t := c.Topology
	for _, v := range []struct {
		name, value string
	}{{"requests-stream", t.RequestsStream}, {"requests-subject", t.RequestsSubject}, {"consumer", t.Consumer},
		{"results-stream", t.ResultsStream}, {"results-prefix", t.ResultsPrefix}, {"dlq-stream", t.DLQStream}, {"dlq-prefix", t.DLQPrefix},
		{"advisory-stream", t.AdvisoryStream}, {"ledger-bucket", t.LedgerBucket}, {"control-bucket", t.ControlBucket},
		{"breaker-bucket", t.BreakerBucket}} {
		if v.value == "" {
			p.bad(v.name, "must not be empty")
		}
	}
	if t.Replicas != 1 && t.Replicas != 3 && t.Replicas != 5 {
		p.bad("stream-replicas", "must be 1, 3 or 5, got %d", t.Replicas)
	}
	if t.AckWait < time.Second {
		p.bad("ack-wait", "must be at least 1s")
	}
	if t.MaxDeliver < 2 {
		p.bad("max-deliver", "must be at least 2, got %d", t.MaxDeliver)
	}
	if t.MaxAckPending < 1 {
		p.bad("max-ack-pending", "must be >= 1, got %d", t.MaxAckPending)
	}
	c.checkRetention(p)
}

// checkRetention checks how long requests, results, dead letters, ledger
// entries and de-duplication ids are kept, against each other.
func (c *config) checkRetention(p *problems) {
	t := c.Topology
	for _, v := range []struct {
		name string
		age  time.Duration
	}{{"results-max-age", t.ResultsMaxAge}, {"dlq-max-age", t.DLQMaxAge}} {
		if v.age < 0 {
			p.bad(v.name, "must be >= 0 (0: kept forever), got %v", v.age)
		} else if v.age > 0 && t.DuplicateWindow > v.age {
			p.bad("duplicate-window", "must not exceed --%s (%v), got %v", v.name, v.age, t.DuplicateWindow)
		}
	}
	if t.DuplicateWindow < 0 {
		p.bad("duplicate-window", "must be >= 0, got %v", t.DuplicateWindow)
	}
	if t.RequestsMaxAge != 0 {
		p.bad("requests-max-age", "must be 0: a request must never age out of the stream unanswered (a long pause would lose the backlog); bound the stream's size instead, which refuses new publishes loudly")
	}
	if outlives(t.ResultsMaxAge, t.LedgerTTL) {
		p.bad("ledger-ttl", "must be at least --results-max-age (%v), got %v: a result kept longer than its ledger entry could be submitted again", t.ResultsMaxAge, t.LedgerTTL)
	}
	if outlives(t.DLQMaxAge, t.LedgerTTL) {
		p.bad("ledger-ttl", "must be at least --dlq-max-age (%v), got %v: a dead letter redriven after its ledger entry expired could be submitted twice", t.DLQMaxAge, t.LedgerTTL)
	}
}

// checkTracker checks the run tracker's settings (only when it runs).
func (c *config) checkTracker(p *problems) {
	t := c.Topology
	if !t.Tracker {
		return
	}
	if !(c.TrackerShare > 0 && c.TrackerShare <= 1) {
		p.bad("tracker-share", "must be above 0 and at most 1, got %v", c.TrackerShare)
	}
	if c.TrackerInterval < 100*time.Millisecond {
		p.bad("tracker-interval", "must be at least 100ms, got %v", c.TrackerInterval)
	}
	if c.TrackerLeaseTTL < 3*time.Second {
		p.bad("tracker-lease-ttl", "must be at least 3s, got %v", c.TrackerLeaseTTL)
	}
	for _, v := range []struct{ name, value string }{{"status-stream", t.StatusStream}, {"status-prefix", t.StatusPrefix},
		{"runs-bucket", t.RunsBucket}, {"tracker-consumer", t.TrackerConsumer}} {
		if strings.TrimSpace(v.value) == "" {
			p.bad(v.name, "must not be empty while --tracker is on")
		}
	}
	for _, other := range []string{t.ResultsPrefix, t.DLQPrefix, t.RequestsSubject} {
		if t.StatusPrefix != "" && (other == t.StatusPrefix || strings.HasPrefix(other, t.StatusPrefix+".") ||
			strings.HasPrefix(t.StatusPrefix, other+".")) {
			p.bad("status-prefix", "must not overlap the results, dlq or requests subjects")
		}
	}
}

// checkRetry checks the retry policy.
func (c *config) checkRetry(p *problems) {
	r := c.Retry
	if r.MaxAttempts < 1 {
		p.bad("max-attempts", "must be >= 1, got %d", r.MaxAttempts)
	}
	if r.InitialInterval <= 0 {
		p.bad("retry-initial", "must be > 0, got %v", r.InitialInterval)
	}
	if r.MaxInterval < r.InitialInterval {
		p.bad("retry-max-interval", "must be at least --retry-initial (%v), got %v", r.InitialInterval, r.MaxInterval)
	}
	if r.MaxElapsed <= 0 {
		p.bad("max-retry-elapsed", "must be > 0, got %v", r.MaxElapsed)
	}
}

// outlives reports whether a retention of kept outlasts one of ledger (0
// means forever).
func outlives(kept, ledger time.Duration) bool {
	return ledger != 0 && (kept == 0 || kept > ledger)
}

// checkSandbox parses the sandbox's execution model. It is checked whether
// or not --sandbox is on, so a typo is reported before the flag is.
func (c *config) checkSandbox(p *problems) {
	e, err := parseRunTime(c.SandboxRunTime)
	if err != nil {
		p.bad("sandbox-run-time", "%v", err)
		return
	}
	e.QueueDelay, e.FailureRate = c.SandboxQueueTime, c.SandboxFailureRate
	if c.SandboxQueueTime < 0 {
		p.bad("sandbox-queue-time", "must not be negative, got %v", c.SandboxQueueTime)
		return
	}
	if !(c.SandboxFailureRate >= 0 && c.SandboxFailureRate <= 1) {
		p.bad("sandbox-failure-rate", "must be a probability between 0 and 1, got %v", c.SandboxFailureRate)
		return
	}
	if err := e.Validate(); err != nil {
		p.bad("sandbox-run-time", "%v", err)
		return
	}
	c.sandboxExecution = e
}

// parseRunTime reads --sandbox-run-time: "off", one duration, or MIN-MAX.
func parseRunTime(s string) (sandbox.Execution, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "off") {
		return sandbox.Execution{}, nil
	}
	lo, hi, ranged := strings.Cut(s, "-")
	if !ranged {
		hi = lo
	}
	shortest, err1 := time.ParseDuration(strings.TrimSpace(lo))
	longest, err2 := time.ParseDuration(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil || shortest < 0 || longest < shortest {
		return sandbox.Execution{}, fmt.Errorf("must be off, a duration (30s) or MIN-MAX with MIN <= MAX (10s-60s), got %q", s)
	}
	return sandbox.Execution{Enabled: true, DurationMin: shortest, DurationMax: longest}, nil
}
