package console

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// followBucket feeds every entry of bucket, then every change, to apply
// until ctx ends. A bucket that does not exist yet (no tracker has run, no
// batch was registered) is looked for again every 10 s, as is one whose
// watch ended.
func followBucket(ctx context.Context, js jetstream.JetStream, bucket string, log *slog.Logger, apply func(jetstream.KeyValueEntry)) {
	for ctx.Err() == nil {
		if err := watchBucket(ctx, js, bucket, apply); err != nil && ctx.Err() == nil {
			log.Debug("console: cannot watch a bucket", "bucket", bucket, "error", err)
		}
		_ = sleepCtx(ctx, 10*time.Second)
	}
}

func watchBucket(ctx context.Context, js jetstream.JetStream, bucket string, apply func(jetstream.KeyValueEntry)) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e != nil {
				apply(e)
			}
		}
	}
}
