// Package natstest starts real, embedded NATS JetStream servers for tests:
// loopback, a random port, a temporary store, shut down by t.Cleanup.
package natstest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server starts a JetStream server with opts (nil: defaults) completed with
// a loopback random port and a StoreDir under t.TempDir() unless set.
func Server(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	if opts == nil {
		opts = &server.Options{}
	}
	o := *opts
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	o.JetStream = true
	o.NoLog, o.NoSigs = true, true
	ns, err := server.NewServer(&o)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("natstest: server did not start")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Connect returns a connection and a JetStream handle to ns, closed by
// t.Cleanup.
func Connect(t testing.TB, ns *server.Server, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// WaitLastMsg polls s until subject holds a message and returns the last one;
// it fails the test after timeout.
func WaitLastMsg(t testing.TB, s jetstream.Stream, subject string, timeout time.Duration) *jetstream.RawStreamMsg {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := s.GetLastMsgForSubject(context.Background(), subject)
		if err == nil {
			return m
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Fatalf("natstest: get %s: %v", subject, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: nothing on %s within %v", subject, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DocumentedPermissions returns the nats-server configuration block of the
// document at path (docs/security.md): the ```conf fence between the
// "<!-- permissions:begin" and "<!-- permissions:end -->" markers, so tests
// load the very text operators copy.
func DocumentedPermissions(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	const begin, end = "<!-- permissions:begin", "<!-- permissions:end -->"
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the %q ... %q markers", path, begin, end)
	}
	block := doc[i:j]
	k, l := strings.Index(block, "```conf\n"), strings.LastIndex(block, "```")
	if k < 0 || l <= k {
		t.Fatalf("%s: the permissions block is not a ```conf fence", path)
	}
	return block[k+len("```conf\n") : l]
}
