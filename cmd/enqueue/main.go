// Command enqueue validates run requests (JSON, JSON Lines or a CSV sample
// sheet) and publishes them to omicsq's requests stream; with --wait it
// reports each request's RunGroupId or dead letter. "enqueue dlq" lists,
// shows and redrives dead letters; "enqueue breaker" lists the resource
// breakers' trips and releases or dead-letters the requests they hold;
// "enqueue status" prints where requests stand, and "enqueue runs retry"
// retries failed run groups with RetryRuns. See docs/enqueue.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
