package settings

import (
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/submit"
)

// NATS are the connection flags, bound to o. The URL's default and meaning
// are the command's: the worker starts an embedded server without one,
// enqueue needs a server to publish to.
func NATS(o *natsconn.Options, urlDefault, urlUsage string) []Setting {
	return []Setting{
		{"nats-url", "NATS_URL", urlUsage, String(&o.URLs, urlDefault)},
		{"nats-creds", "NATS_CREDS", "path of a NATS .creds file (JWT + NKey)", String(&o.CredsFile, "")},
		{"nats-nkey", "NATS_NKEY", "path of a file holding an NKey seed", String(&o.NKeySeedFile, "")},
		{"nats-user", "NATS_USER", "NATS user name", String(&o.User, "")},
		{"nats-password", "NATS_PASSWORD", "NATS password (prefer the environment variable)", String(&o.Password, "")},
		{"nats-token", "NATS_TOKEN", "NATS token (prefer the environment variable)", String(&o.Token, "")},
		{"nats-ca", "NATS_CA", "path of a PEM CA bundle to verify the NATS server", String(&o.CAFile, "")},
		{"nats-cert", "NATS_CERT", "path of a PEM client certificate for NATS mutual TLS", String(&o.CertFile, "")},
		{"nats-key", "NATS_KEY", "path of the PEM private key of --nats-cert", String(&o.KeyFile, "")},
		{"nats-inbox-prefix", "NATS_INBOX_PREFIX", "prefix of reply subjects instead of _INBOX, so permissions can keep other clients from reading deliveries (see docs/security.md)", String(&o.InboxPrefix, "")},
	}
}

// Topology are the flags naming the streams and subjects of the contract,
// bound to t: requests (stream and subject), then outcomes (results and
// dead letters, lifecycle events), apart so the worker can list its consumer between them.
// The subject flag is the command's own spelling (the worker's
// --requests-subject, enqueue's --subject); its variable is one.
func Topology(t *client.Topology, subjectFlag string) (requests, outcomes []Setting) {
	def := client.DefaultTopology()
	requests = []Setting{
		{"requests-stream", "OMICSQ_REQUESTS_STREAM", "stream of run requests", String(&t.RequestsStream, def.RequestsStream)},
		{subjectFlag, "OMICSQ_REQUESTS_SUBJECT", "subject producers publish requests to", String(&t.RequestsSubject, def.RequestsSubject)},
	}
	outcomes = []Setting{
		{"results-stream", "OMICSQ_RESULTS_STREAM", "stream of results", String(&t.ResultsStream, def.ResultsStream)},
		{"results-prefix", "OMICSQ_RESULTS_PREFIX", "results are published to <prefix>.<key token>", String(&t.ResultsPrefix, def.ResultsPrefix)},
		{"dlq-stream", "OMICSQ_DLQ_STREAM", "stream of dead letters", String(&t.DLQStream, def.DLQStream)},
		{"dlq-prefix", "OMICSQ_DLQ_PREFIX", "dead letters are published to <prefix>.<key token>", String(&t.DLQPrefix, def.DLQPrefix)},
		{"status-stream", "OMICSQ_STATUS_STREAM", "stream of run lifecycle events", String(&t.StatusStream, def.StatusStream)},
		{"status-prefix", "OMICSQ_STATUS_PREFIX", "lifecycle events are published to <prefix>.<key token>.group and .run.<run token>", String(&t.StatusPrefix, def.StatusPrefix)},
		{"batches-bucket", "OMICSQ_BATCHES_BUCKET", "KV bucket of the batches' records (docs/lifecycle.md, Batches), provisioned with the tracker's resources; empty: no batches", String(&t.BatchesBucket, def.BatchesBucket)},
	}
	return requests, outcomes
}

// MessageLimit is the flag of the largest request, bound to l: producers
// refuse what the worker would.
func MessageLimit(l *submit.Limits) Setting {
	return Setting{"max-message-bytes", "OMICSQ_MAX_MESSAGE_BYTES",
		"largest request message accepted (the requests stream's message limit; the only local size rule)",
		Int(&l.MaxRequestBytes, submit.DefaultLimits().MaxRequestBytes)}
}

// LedgerBucket is the flag of the submission ledger's KV bucket, bound to p
// with default def; note adds why the command reads it ("" for none).
func LedgerBucket(p *string, def, note string) Setting {
	return Setting{"ledger-bucket", "OMICSQ_LEDGER_BUCKET", "KV bucket of the submission ledger" + note, String(p, def)}
}

// BreakerBucket is the flag of the resource breakers' KV bucket.
func BreakerBucket(p *string, def string) Setting {
	return Setting{"breaker-bucket", "OMICSQ_BREAKER_BUCKET", "KV bucket of the resource breakers", String(p, def)}
}

// API are the flags of the Omics API client (endpoint, plain http for a
// standalone sandbox, region, timeout), bound to the given fields: the
// worker submits with them, and enqueue runs retry calls RetryRuns.
func API(endpoint *string, insecure *bool, region *string, timeout *time.Duration) []Setting {
	return []Setting{
		{"endpoint", "OMICS_ENDPOINT", "Omics API endpoint, host[:port] without scheme", String(endpoint, "omics.tencentcloudapi.com")},
		{"insecure-http", "OMICS_INSECURE_HTTP", "use plain http to the endpoint (a standalone omics-sim); never for Tencent Cloud", Bool(insecure, false)},
		{"region", "TENCENTCLOUD_REGION", "Tencent Cloud region", String(region, "ap-guangzhou")},
		{"api-timeout", "OMICSQ_API_TIMEOUT", "timeout of one API call (an expired call is reconciled by a lookup, never resubmitted blind: see docs/reliability.md for sizing)", Duration(timeout, 5*time.Second)},
	}
}
