package client_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/worker"
)

// Publish one run request and wait for the run group a worker creates. The
// worker here is the real one, in-process, with its embedded JetStream
// server and the sandbox Omics API (what `go run ./cmd/worker --sandbox`
// starts); a LIMS would connect to its NATS cluster instead.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	natsURL, stopWorker := startLocalWorker(ctx)
	defer stopWorker()

	nc, err := nats.Connect(natsURL)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	c := client.New(js)

	body := []byte(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"NA12878-WGS-01",
		"InputBase64":"eyJzYW1wbGUiOiJOQTEyODc4In0="}`)
	req, err := client.NewRequest(body, "lims-S-0001", 0)
	if err != nil {
		panic(err) // an *InvalidRequestError names the field and the rule
	}
	ack, err := c.Publish(ctx, req)
	if err != nil {
		panic(err)
	}
	out, err := c.WaitResult(ctx, ack)
	if err != nil {
		panic(err)
	}
	if out.Result == nil {
		fmt.Println(out.Key, "dead-lettered:", out.Reason(), out.Code())
		return
	}
	fmt.Println(out.Key, "has run group:", strings.HasPrefix(out.Result.RunGroupID, "run-"))
	// Output: lims-S-0001 has run group: true
}

// A request without a key gets one derived from its canonical form, so the
// same sample published twice, however it is spelled, is one request.
func ExampleNewRequest() {
	a, _ := client.NewRequest([]byte(`{"Name":"s1","ApplicationId":"app","EnvironmentId":"env","InputBase64":"e30="}`), "", 0)
	b, _ := client.NewRequest([]byte(`{ "InputBase64": "e30=", "EnvironmentId": "env", "ApplicationId": "app", "Name": "s1", "Description": "" }`), "", 0)
	fmt.Println(a.Key == b.Key, strings.HasPrefix(a.Key, "sha256-"))

	_, err := client.NewRequest([]byte(`{"Name":"s1","ApplicationId":"app","EnvironmentId":"env","InputBase64":"e30=","AccessMode":"OPEN"}`), "", 0)
	fmt.Println(err)
	// Output:
	// true true
	// invalid run request: InvalidParameterValue AccessMode: must be PRIVATE or PUBLIC
}

// startLocalWorker runs the worker in-process with an embedded JetStream
// server on a random loopback port and the sandbox API, and returns the
// server's URL and a function that stops the worker and removes its store.
func startLocalWorker(ctx context.Context) (natsURL string, stop func()) {
	dir, err := os.MkdirTemp("", "omicsq-example-")
	if err != nil {
		panic(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ready := make(chan worker.Started, 1)
	done := make(chan error, 1)
	args := []string{"--sandbox", "--store-dir", dir, "--embedded-listen", "127.0.0.1:0", "--metrics-addr", "", "--log-level", "error"}
	go func() {
		done <- worker.Run(wctx, args, func(string) string { return "" }, io.Discard, io.Discard, ready)
	}()
	select {
	case st := <-ready:
		return st.NATSURL, func() {
			cancel()
			<-done
			os.RemoveAll(dir)
		}
	case err := <-done:
		cancel()
		os.RemoveAll(dir)
		panic(fmt.Sprintf("worker: %v", err))
	}
}
