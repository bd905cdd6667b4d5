package queue

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// retriesBucket holds one intent record per key retried (internal/rerun).
// It lives as long as the runs entries it refers to.
func (t Topology) retriesBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: t.RetriesBucket, Description: "omicsq retries of failed run groups: intent before every RetryRuns call",
		History: 1, TTL: t.RunsTTL, Storage: jetstream.FileStorage, Replicas: t.Replicas}
}

// provisionRetries creates the retries bucket beside the runs bucket; an
// empty name (a topology from before retries) skips it.
func provisionRetries(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if strings.TrimSpace(t.RetriesBucket) == "" {
		return nil
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, t.retriesBucket()); err != nil {
		return fmt.Errorf("provision bucket %s: %w", t.RetriesBucket, err)
	}
	return nil
}

func verifyRetries(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if strings.TrimSpace(t.RetriesBucket) == "" {
		return nil
	}
	if _, err := js.KeyValue(ctx, t.RetriesBucket); err != nil {
		return fmt.Errorf("bind bucket %s: %w (needed to retry failed run groups; create it, or run with --tracker=false)", t.RetriesBucket, err)
	}
	return nil
}

// AutoRetryConsumerConfig is the auto-retry policy's durable consumer on
// the status stream: terminal group events only matter, so it reads the
// group subjects, from the time it is first created (a fleet that turns
// the policy on does not retry every failure of the last 30 days).
func (t Topology) AutoRetryConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       t.AutoRetryConsumer,
		Description:   "omicsq auto-retry policy: terminal failed run groups",
		DeliverPolicy: jetstream.DeliverNewPolicy,
		FilterSubject: t.StatusPrefix + ".*.group",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1, // a failed group must not be skipped while the policy could still retry it
		MaxAckPending: 100,
		Replicas:      t.Replicas,
	}
}
