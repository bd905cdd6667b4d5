// Package operatetest is the test bed of enqueue's commands (cmd/enqueue
// and internal/operate): an embedded JetStream server, provisioned as the
// worker provisions it, a way to run a command against it, and what its
// streams hold.
package operatetest

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
)

// Env is an embedded JetStream server with the default topology.
type Env struct {
	T    *testing.T
	URL  string // the client URL, for NATS_URL
	JS   jetstream.JetStream
	Topo queue.Topology
}

// New starts a server for the test; with provision, queue.Provision
// creates its streams, consumers and buckets, as a worker does.
func New(t *testing.T, provision bool) *Env {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	e := &Env{T: t, URL: ns.ClientURL(), JS: js, Topo: queue.DefaultTopology()}
	if provision {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := queue.Provision(ctx, js, e.Topo); err != nil {
			t.Fatalf("provision: %v", err)
		}
	}
	return e
}

// Messages returns every message stored in a stream, in order.
func (e *Env) Messages(stream string) []*jetstream.RawStreamMsg {
	e.T.Helper()
	ctx := e.T.Context()
	s, err := e.JS.Stream(ctx, stream)
	if err != nil {
		e.T.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.T.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// Result is how a command ended and what it printed.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Lines are the lines of Stdout.
func (r Result) Lines() []string {
	return strings.Split(strings.TrimSpace(r.Stdout), "\n")
}

// Run runs a command (what main calls, but for the process) with the
// environment variables envVars, for at most 50 seconds.
func Run(t *testing.T, envVars map[string]string, command func(ctx context.Context, stdout, stderr io.Writer, getenv func(string) string) int) Result {
	t.Helper()
	var out, errOut logcapture.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	code := command(ctx, &out, &errOut, func(k string) string { return envVars[k] })
	return Result{Code: code, Stdout: out.String(), Stderr: errOut.String()}
}
