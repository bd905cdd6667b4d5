// Command producer is a LIMS-side program that submits run requests to
// omicsq and waits for their run groups, using only omicsq's public client
// package. It lives in its own module to show that nothing internal is
// needed.
//
//	go run . -nats nats://127.0.0.1:4222 -timeout 5m request1.json request2.json ...
//
// Each file holds one RunApplication request body; the file name (without
// .json) is its idempotency key, so running the program twice never submits
// a sample twice.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server URL")
	timeout := flag.Duration("timeout", 5*time.Minute, "how long to wait for the outcomes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *url, *timeout, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url string, timeout time.Duration, files []string) error {
	var reqs []client.Request
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		key := strings.TrimSuffix(filepath.Base(f), ".json")
		r, err := client.NewRequest(body, key, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err) // names the field and rule, never a value
		}
		reqs = append(reqs, r)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c := client.New(js)
	acks, err := c.PublishBatch(ctx, reqs)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w, err := c.Watch(wctx, acks)
	if err != nil {
		return err
	}
	defer w.Stop()
	settled, failed := 0, 0
	for o := range w.Outcomes() {
		switch {
		case o.Earlier:
			continue
		case o.Result != nil:
			fmt.Printf("%s run-group %s\n", o.Key, o.Result.RunGroupID)
		default:
			failed++
			fmt.Printf("%s dead-letter %s %s\n", o.Key, o.Reason(), o.Code())
		}
		settled++
	}
	if settled < len(acks) {
		return fmt.Errorf("%d of %d requests still pending after %v", len(acks)-settled, len(acks), timeout)
	}
	if failed > 0 {
		return fmt.Errorf("%d dead-lettered (see enqueue dlq list)", failed)
	}
	return nil
}
