// Command worker pulls run requests from NATS JetStream and submits them to
// the Tencent Cloud Omics RunApplication API, at most a configured rate across
// every replica, with exactly-once effects: each request ends as one run group
// (published to the results stream) or one dead letter. internal/worker is
// the process; this command wires it to signals and the environment.
//
// With no NATS URL it starts an embedded JetStream server on loopback, and
// with --sandbox an in-process sandbox Omics API, so `go run ./cmd/worker
// --sandbox` is a complete local system.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/omicsq/omicsq/internal/worker"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	worker.Version = version
	if err := worker.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		if errors.Is(err, worker.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}
