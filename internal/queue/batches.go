package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// batchesBucket holds the batches' records and members (client.BatchRecord,
// client.BatchMember). It lives as long as the runs entries, which a
// member's progress follows; History 1, as every record is rewritten by
// compare-and-set.
func (t Topology) batchesBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: t.BatchesBucket, Description: "omicsq batches: records, members and their progress",
		History: 1, TTL: t.RunsTTL, Storage: jetstream.FileStorage, Replicas: t.Replicas}
}

// provisionBatches creates the batches bucket with the tracker's resources
// (a batch's progress is the tracker's); an empty name turns batches off.
func provisionBatches(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if strings.TrimSpace(t.BatchesBucket) == "" {
		return nil
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, t.batchesBucket()); err != nil {
		return fmt.Errorf("provision bucket %s: %w", t.BatchesBucket, err)
	}
	return nil
}

func verifyBatches(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if strings.TrimSpace(t.BatchesBucket) == "" {
		return nil
	}
	if _, err := js.KeyValue(ctx, t.BatchesBucket); err != nil {
		return fmt.Errorf("bind bucket %s: %w (needed for batches; create it, or run with --batches-bucket=\"\")", t.BatchesBucket, err)
	}
	return nil
}
