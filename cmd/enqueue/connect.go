package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natsconn"
)

// session is one command's connection: NATS, JetStream and the client.
type session struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	client *client.Client
}

// connect opens a session; log messages below level are dropped.
func connect(ctx context.Context, c *config, stderr io.Writer, level slog.Level) (*session, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, c.conn, log, natsconn.Hooks{})
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cl := client.New(js, client.WithTopology(c.topo.Topology), client.WithPublishTimeout(publishTimeout))
	return &session{nc: nc, js: js, client: cl}, nil
}

func (s *session) close() { s.nc.Close() }
