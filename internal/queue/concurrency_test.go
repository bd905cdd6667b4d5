package queue

import (
	"context"
	"github.com/omicsq/omicsq/client"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

// Two deliveries of one key handled side by side in one process (a resend
// after the de-duplication window, a redrive racing its original) make one
// RunApplication call between them, never two: the ledger lease only tells
// processes apart, so the processor also keeps its in-flight keys.
func TestConcurrentDeliveriesOfOneKeyCallOnce(t *testing.T) {
	ctx := context.Background()
	// Every call is slow, so the first is still open when the second starts.
	sb, err := sandbox.New(sandbox.Options{Faults: sandbox.Faults{Latency: 300 * time.Millisecond, LatencyP: 1}})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ln, err := sandbox.Listen(sctx, "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	api, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: ln.Addr(), InsecureHTTP: true, Timeout: 5 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	proc, _, _ := testProcessor(t, DefaultTopology(), api, slog.New(slog.DiscardHandler))
	body := []byte(`{"ApplicationId":"app-1","Name":"sample-1","EnvironmentId":"env-1","InputBase64":"e30K"}`)
	h := nats.Header{}
	h.Set(client.HeaderKey, "key-1")
	decisions := make([]Decision, 2)
	var wg sync.WaitGroup
	for i := range decisions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			decisions[i] = proc.Handle(ctx, Delivery{Data: body, Header: h, StreamSeq: uint64(10 + i), NumDelivered: 1, Timestamp: time.Now()})
		}()
		time.Sleep(50 * time.Millisecond) // the first is inside its call when the second arrives
	}
	wg.Wait()
	if n := sb.Stats().Actions["RunApplication"].Arrivals; n != 1 {
		t.Fatalf("RunApplication calls = %d, want 1", n)
	}
	acks, naks := 0, 0
	for _, d := range decisions {
		switch d.Action {
		case ActionAck:
			acks++
		case ActionNak:
			naks++
		}
	}
	if acks != 1 || naks != 1 {
		t.Fatalf("decisions = %+v; want one ack (the result) and one hand-back", decisions)
	}
	if groups := sb.RunGroups(); len(groups) != 1 {
		t.Fatalf("run groups = %d, want 1", len(groups))
	}
}
