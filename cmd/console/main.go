// Command console serves omicsq's operator console: the backlog per lane,
// the limiter, the pause flag, requests by key, runs by status and the
// dead-letter queue with a previewed, audited redrive. It reads what the
// worker fleet writes to JetStream and needs no database. It listens on
// loopback unless told otherwise and always requires authentication; see
// docs/console.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
