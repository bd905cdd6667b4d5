// Package queue owns omicsq's JetStream side: the streams, consumer and KV
// buckets, the message contract (headers, result and dead-letter bodies), the
// publishers, and the consume loop that maps each processed message to Ack,
// NakWithDelay, Term or a dead letter.
package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// Topology names and sizes every JetStream resource omicsq uses. The zero
// value is not useful; start from DefaultTopology.
type Topology struct {
	// Topology holds the names producers share (client.Topology): the
	// requests, results and dead-letter streams and subjects.
	client.Topology
	// Consumer is the durable pull consumer every worker shares for the
	// bare requests subject. Default omicsq-worker. With Lanes, each flow
	// (<requests subject>.<lane>.<fairness token>) has its own durable
	// consumer, named FlowConsumer, created when a worker first sees it.
	Consumer string
	// Lanes adds the flow subjects (<requests subject>.>) to the requests
	// stream and filters Consumer to the bare subject (a work-queue stream
	// needs consumers whose filters do not overlap). Default true.
	Lanes bool
	// FlowInactive is how long a flow's consumer may go without a fetch
	// before JetStream deletes it (a worker recreates it when the flow has
	// backlog again). Default 1h.
	FlowInactive time.Duration
	// AdvisoryStream durably captures JetStream's max-deliveries advisories
	// for the consumer, so a message that exhausted its deliveries (a crash
	// loop) is dead-lettered even if no worker was listening at that moment.
	// Default OMICSQ_ADVISORIES.
	AdvisoryStream string
	// LedgerBucket is the KV bucket of the submission ledger. Default OMICSQ_LEDGER.
	LedgerBucket string
	// ControlBucket is the KV bucket of fleet-wide state (the pause flag).
	// Default OMICSQ_CONTROL.
	ControlBucket string
	// BreakerBucket is the KV bucket of the resource breakers
	// (internal/breaker): one entry per resource with recent permanent
	// failures, trips that hold requests until an operator releases them.
	// Default OMICSQ_BREAKERS.
	BreakerBucket string

	// Replicas of every stream and bucket (1, 3 or 5). Default 1.
	Replicas int
	// RequestsMaxAge must be 0: a request stays in the stream until it has
	// an outcome, however long the fleet is paused. (A MaxAge would delete
	// a paused backlog unanswered.)
	RequestsMaxAge time.Duration
	// ResultsMaxAge, DLQMaxAge and LedgerTTL bound retention of results, dead
	// letters and ledger entries. Defaults 30, 30 and 45 days: the ledger
	// outlives the results so a late redelivery still finds its record.
	ResultsMaxAge time.Duration
	DLQMaxAge     time.Duration
	LedgerTTL     time.Duration
	// DuplicateWindow is how long JetStream drops a republished request with
	// the same Nats-Msg-Id. Default 1h; beyond it the ledger still prevents a
	// second submission.
	DuplicateWindow time.Duration
	// MaxMessageBytes bounds a request message. Default 1 MiB.
	MaxMessageBytes int32

	// MaxDeliver bounds deliveries of one message that the worker did not
	// hand back on purpose (crashes, lost acks); past it the message takes
	// the give-up path: leases honoured, a lookup, then a max_deliveries dead
	// letter. The worker enforces it itself; the JetStream consumer has no
	// delivery limit, so it can never strand a message. Default 20.
	MaxDeliver int
	// AckWait is how long a delivered message may go without an ack or an
	// in-progress signal before JetStream redelivers it: how soon a killed
	// worker's messages come back. Holders signal every AckWait/3, and the
	// ledger's lease and in-flight deadline keep an early redelivery from
	// calling while the holder may still be. Default 6s (bench faults:
	// 60s left a killed replica's keys stranded for ~57 s).
	AckWait time.Duration
	// MaxAckPending bounds messages delivered but unacknowledged across the
	// whole fleet. Default 1000.
	MaxAckPending int

	// Tracker provisions, and in bind-only mode requires, the run tracker's
	// resources (internal/tracker): the status stream (client.Topology's
	// StatusStream), RunsBucket and TrackerConsumer. Default true.
	Tracker bool
	// RunsBucket is the run tracker's KV bucket: one entry per request with
	// a run group, holding the statuses whose events were published.
	// Default OMICSQ_RUNS.
	RunsBucket string
	// TrackerConsumer is the durable consumer on the results stream through
	// which the run tracker learns every run group created. Default
	// omicsq-tracker.
	TrackerConsumer string
	// StatusMaxAge bounds retention of lifecycle events. Default 30 days.
	StatusMaxAge time.Duration
	// StatusDuplicateWindow is how long the status stream drops a
	// re-published event with the same Nats-Msg-Id: far longer than a
	// tracker fail-over. The events' once-only guarantee does not rest on it
	// (each publish also expects its subject's last sequence), and the
	// server holds every ID of the window in memory (at 20 run groups/s, a
	// few events each, 24h would be millions), so it stays short. Default 1h.
	StatusDuplicateWindow time.Duration
	// RunsTTL bounds how long a runs entry outlives its last write; the
	// tracker rewrites active entries well before it. Default 45 days, like
	// the ledger.
	RunsTTL time.Duration
	// RetriesBucket is the KV bucket of the retries of failed run groups
	// (internal/rerun): one intent record per key, written before every
	// RetryRuns call. Provisioned with the tracker's resources. Default
	// OMICSQ_RETRIES.
	RetriesBucket string
	// AutoRetryConsumer is the durable consumer on the status stream
	// through which the workers' opt-in auto-retry policy reads terminal
	// group events. Created only when the policy is on. Default
	// omicsq-auto-retry.
	AutoRetryConsumer string
}

// DefaultTopology returns the documented default names and limits.
func DefaultTopology() Topology {
	return Topology{
		Topology:        client.DefaultTopology(),
		Consumer:        "omicsq-worker",
		Lanes:           true,
		FlowInactive:    time.Hour,
		AdvisoryStream:  "OMICSQ_ADVISORIES",
		LedgerBucket:    "OMICSQ_LEDGER",
		ControlBucket:   "OMICSQ_CONTROL",
		BreakerBucket:   "OMICSQ_BREAKERS",
		Replicas:        1,
		RequestsMaxAge:  0,
		ResultsMaxAge:   30 * 24 * time.Hour,
		DLQMaxAge:       30 * 24 * time.Hour,
		LedgerTTL:       45 * 24 * time.Hour,
		DuplicateWindow: time.Hour,
		MaxMessageBytes: 1 << 20,
		AckWait:         6 * time.Second,
		MaxDeliver:      20,
		MaxAckPending:   1000,

		Tracker:               true,
		RunsBucket:            "OMICSQ_RUNS",
		TrackerConsumer:       "omicsq-tracker",
		StatusMaxAge:          30 * 24 * time.Hour,
		StatusDuplicateWindow: time.Hour,
		RunsTTL:               45 * 24 * time.Hour,
		RetriesBucket:         "OMICSQ_RETRIES",
		AutoRetryConsumer:     "omicsq-auto-retry",
	}
}

// Validate names the settings that are out of range: the names producers
// share (client.Topology.Validate), then the worker's own.
func (t Topology) Validate() error {
	errs := []error{t.Topology.Validate()}
	for _, n := range []struct{ name, value string }{
		{"consumer", t.Consumer}, {"advisory stream", t.AdvisoryStream}, {"ledger bucket", t.LedgerBucket},
		{"control bucket", t.ControlBucket}, {"breaker bucket", t.BreakerBucket},
	} {
		if strings.TrimSpace(n.value) == "" {
			errs = append(errs, fmt.Errorf("%s must not be empty", n.name))
		}
	}
	if t.Replicas != 1 && t.Replicas != 3 && t.Replicas != 5 {
		errs = append(errs, fmt.Errorf("stream replicas must be 1, 3 or 5"))
	}
	if t.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("ack wait must be at least 1s"))
	}
	if t.MaxDeliver < 2 {
		errs = append(errs, fmt.Errorf("max deliver must be at least 2"))
	}
	if t.MaxAckPending < 1 {
		errs = append(errs, fmt.Errorf("max ack pending must be at least 1"))
	}
	if t.RequestsMaxAge != 0 {
		errs = append(errs, fmt.Errorf("requests max age must be 0: requests are kept until they have an outcome"))
	}
	for name, kept := range map[string]time.Duration{"results": t.ResultsMaxAge, "dlq": t.DLQMaxAge} {
		if t.LedgerTTL != 0 && (kept == 0 || kept > t.LedgerTTL) {
			errs = append(errs, fmt.Errorf("ledger ttl must be at least the %s max age", name))
		}
	}
	return errors.Join(errs...)
}

// MaxDeliveriesAdvisory is the subject on which JetStream announces a message
// that reached MaxDeliver.
func (t Topology) MaxDeliveriesAdvisory() string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + t.RequestsStream + "." + t.Consumer
}

func (t Topology) streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        t.RequestsStream,
			Description: "omicsq run requests awaiting submission",
			Subjects:    t.requestSubjects(),
			Retention:   jetstream.WorkQueuePolicy,
			// Never drop a request to make room: a full stream refuses new
			// publishes, which the producer sees.
			Discard:    jetstream.DiscardNew,
			MaxAge:     t.RequestsMaxAge,
			MaxMsgSize: t.MaxMessageBytes,
			Storage:    jetstream.FileStorage,
			Replicas:   t.Replicas,
			Duplicates: t.DuplicateWindow,
		},
		{
			// One message per subject, new ones refused: a second result for
			// the same request is rejected by the server, so results are
			// exactly-once however often a worker retries the publish.
			Name:                 t.ResultsStream,
			Description:          "omicsq results: one RunGroupId per request",
			Subjects:             []string{t.ResultsPrefix + ".>"},
			Retention:            jetstream.LimitsPolicy,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			MaxMsgsPerSubject:    1,
			MaxAge:               t.ResultsMaxAge,
			Storage:              jetstream.FileStorage,
			Replicas:             t.Replicas,
			Duplicates:           t.DuplicateWindow,
			AllowDirect:          true,
		},
		{
			Name:        t.DLQStream,
			Description: "omicsq dead letters: original request plus the reason",
			Subjects:    []string{t.DLQPrefix + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      t.DLQMaxAge,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Duplicates:  t.DuplicateWindow,
			AllowDirect: true,
		},
		{
			Name:        t.AdvisoryStream,
			Description: "omicsq: max-deliveries advisories of the worker consumer",
			Subjects:    []string{t.MaxDeliveriesAdvisory()},
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      t.DLQMaxAge,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
		},
	}
}

// AdvisoryConsumer is the durable consumer workers share on AdvisoryStream.
const AdvisoryConsumer = "omicsq-advisories"

func (t Topology) advisoryConsumer() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       AdvisoryConsumer,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		Replicas:      t.Replicas,
	}
}

// requestSubjects are the requests stream's subjects: the bare one, and
// with Lanes <subject>.<lane>.* for each lane. Only those: a request on
// any other subject (a lane that does not exist, a token too many) is
// refused at publish ("no stream") instead of being stored where no
// consumer takes it, holding its key's de-duplication window.
func (t Topology) requestSubjects() []string {
	subjects := []string{t.RequestsSubject}
	if t.Lanes {
		for _, p := range client.Priorities {
			subjects = append(subjects, t.RequestsSubject+"."+string(p)+".*")
		}
	}
	return subjects
}

// FlowConsumer names the durable consumer of the flow lane/token:
// <Consumer>-<lane>-<token>, or for a token that cannot be part of a
// consumer name (a producer's own, not the client's 32 hex digits)
// <Consumer>-<lane>-h<16 hex digits of its SHA-256>. The bare subject's
// flow (token "") is Consumer.
func (t Topology) FlowConsumer(lane client.Priority, token string) string {
	if token == "" {
		return t.Consumer
	}
	if !flowToken.MatchString(token) {
		sum := sha256.Sum256([]byte(token))
		token = "h" + hex.EncodeToString(sum[:8])
	}
	return t.Consumer + "-" + string(lane) + "-" + token
}

// FlowConsumerConfig is the consumer of one flow: the shared consumer's
// settings, filtered to the flow's subject, and deleted by JetStream when
// no worker has fetched from it for FlowInactive.
func (t Topology) FlowConsumerConfig(lane client.Priority, token string) jetstream.ConsumerConfig {
	cfg := t.consumer()
	cfg.Durable = t.FlowConsumer(lane, token)
	cfg.Description = "omicsq workers: one flow of lane " + string(lane)
	cfg.FilterSubject = t.RequestsSubject + "." + string(lane) + "." + token
	cfg.InactiveThreshold = t.FlowInactive
	return cfg
}

func (t Topology) consumer() jetstream.ConsumerConfig {
	var filter string
	if t.Lanes {
		filter = t.RequestsSubject
	}
	return jetstream.ConsumerConfig{
		Durable:       t.Consumer,
		FilterSubject: filter,
		Description:   "omicsq workers (shared)",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxDeliver:    -1, // the worker's own budget (Topology.MaxDeliver) applies
		MaxAckPending: t.MaxAckPending,
		MaxWaiting:    512,
		Replicas:      t.Replicas,
	}
}

func (t Topology) buckets() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: t.LedgerBucket, Description: "omicsq submission ledger", History: 1, TTL: t.LedgerTTL,
			Storage: jetstream.FileStorage, Replicas: t.Replicas},
		{Bucket: t.ControlBucket, Description: "omicsq fleet control (pause)", History: 1,
			Storage: jetstream.FileStorage, Replicas: t.Replicas},
		// No TTL: an open trip holds requests until an operator acts;
		// released and dead-lettered trips carry their own expiry, and
		// the workers delete them (internal/breaker).
		{Bucket: t.BreakerBucket, Description: "omicsq resource breakers (held requests)", History: 1,
			Storage: jetstream.FileStorage, Replicas: t.Replicas},
	}
}

// statusStream keeps the run tracker's lifecycle events. Limits retention
// (readers come and go; nobody acks), several events per subject (one per
// status), and a duplicate window that spans a tracker fail-over, so a
// re-published event is dropped by the server too.
func (t Topology) statusStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        t.StatusStream,
		Description: "omicsq run lifecycle events: one per change of status of a run group or batch run",
		Subjects:    []string{t.StatusPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      t.StatusMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Duplicates:  t.StatusDuplicateWindow,
		AllowDirect: true,
	}
}

// trackerConsumer is the run tracker's durable consumer on the results
// stream: every result from the first, acked once its run group is recorded.
func (t Topology) trackerConsumer() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       t.TrackerConsumer,
		Description:   "omicsq run tracker: run groups to follow",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1, // a result must never be skipped: it is a run group nobody would follow
		MaxAckPending: 1000,
		Replicas:      t.Replicas,
	}
}

func (t Topology) runsBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: t.RunsBucket, Description: "omicsq run tracker: run groups and the events published",
		History: 1, TTL: t.RunsTTL, Storage: jetstream.FileStorage, Replicas: t.Replicas}
}

// ProvisionTracker creates or updates the run tracker's stream, consumer
// and bucket (after the results stream exists). Provision calls it when
// t.Tracker is set; the worker calls it apart, so that a tracker without its
// resources does not stop submissions.
func ProvisionTracker(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if _, err := js.CreateOrUpdateStream(ctx, t.statusStream()); err != nil {
		return fmt.Errorf("provision stream %s: %w", t.StatusStream, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, t.ResultsStream, t.trackerConsumer()); err != nil {
		return fmt.Errorf("provision consumer %s: %w", t.TrackerConsumer, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, t.runsBucket()); err != nil {
		return fmt.Errorf("provision bucket %s: %w", t.RunsBucket, err)
	}
	if err := provisionRetries(ctx, js, t); err != nil {
		return err
	}
	return provisionBatches(ctx, js, t)
}

// VerifyTracker checks that the run tracker's resources exist, naming the
// way out for a deployment that manages its streams itself.
func VerifyTracker(ctx context.Context, js jetstream.JetStream, t Topology) error {
	const hint = " (needed by the run tracker; create it, or run with --tracker=false)"
	if _, err := js.Stream(ctx, t.StatusStream); err != nil {
		return fmt.Errorf("bind stream %s: %w"+hint, t.StatusStream, err)
	}
	c, err := js.Consumer(ctx, t.ResultsStream, t.TrackerConsumer)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w"+hint, t.TrackerConsumer, err)
	}
	if c.CachedInfo().Config.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("bind consumer %s: ack policy must be explicit", t.TrackerConsumer)
	}
	if _, err := js.KeyValue(ctx, t.RunsBucket); err != nil {
		return fmt.Errorf("bind bucket %s: %w"+hint, t.RunsBucket, err)
	}
	if err := verifyRetries(ctx, js, t); err != nil {
		return err
	}
	return verifyBatches(ctx, js, t)
}

// Provision creates or updates every stream, the consumer and the buckets.
// It is idempotent: workers starting together all call it safely.
func Provision(ctx context.Context, js jetstream.JetStream, t Topology) error {
	for _, cfg := range t.streams() {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, t.RequestsStream, t.consumer()); err != nil {
		return fmt.Errorf("provision consumer %s: %w", t.Consumer, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, t.AdvisoryStream, t.advisoryConsumer()); err != nil {
		return fmt.Errorf("provision consumer %s: %w", AdvisoryConsumer, err)
	}
	for _, cfg := range t.buckets() {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("provision bucket %s: %w", cfg.Bucket, err)
		}
	}
	if t.Tracker {
		return ProvisionTracker(ctx, js, t)
	}
	return nil
}

// Verify checks, without changing anything, that every resource exists: the
// bind-only mode for operators who manage streams themselves (e.g. with NACK).
func Verify(ctx context.Context, js jetstream.JetStream, t Topology) error {
	for _, name := range []string{t.RequestsStream, t.ResultsStream, t.DLQStream, t.AdvisoryStream} {
		if _, err := js.Stream(ctx, name); err != nil {
			return fmt.Errorf("bind stream %s: %w", name, err)
		}
	}
	c, err := js.Consumer(ctx, t.RequestsStream, t.Consumer)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w", t.Consumer, err)
	}
	info := c.CachedInfo()
	if info.Config.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("bind consumer %s: ack policy must be explicit", t.Consumer)
	}
	if info.Config.MaxDeliver > 0 {
		return fmt.Errorf("bind consumer %s: max deliver must be unlimited (-1): the worker enforces its own delivery budget, and a consumer limit strands messages", t.Consumer)
	}
	for _, b := range []string{t.LedgerBucket, t.ControlBucket, t.BreakerBucket} {
		if _, err := js.KeyValue(ctx, b); err != nil {
			return fmt.Errorf("bind bucket %s: %w", b, err)
		}
	}
	if t.Tracker {
		return VerifyTracker(ctx, js, t)
	}
	return nil
}
