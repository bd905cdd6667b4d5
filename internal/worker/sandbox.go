package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/omicsq/omicsq/sandbox"
)

// sandboxExampleProject is the ProjectId of Tencent's documentation
// examples and of every request in examples/. In --sandbox mode the tracker
// follows it besides --tracker-projects, so the quickstart's
// `enqueue --wait=completed` needs no flag: the tracker can follow only
// projects it is told of (the ledger keeps a digest, not the ProjectId).
const sandboxExampleProject = "prj-peaceful-pink-bird-631828"

// sandboxHandle is the in-process sandbox API of --sandbox mode, served over
// real HTTP on loopback so the worker's client signs and sends exactly what
// it would send to Tencent Cloud.
type sandboxHandle struct {
	srv *sandbox.Server
	ln  *sandbox.Listener
}

func startSandbox(ctx context.Context, cfg *config, log *slog.Logger) (*sandboxHandle, error) {
	srv, err := sandbox.New(sandbox.Options{
		SecretID:  sandbox.DefaultSecretID,
		SecretKey: sandbox.DefaultSecretKey,
		Rate:      cfg.SandboxRate,
		Execution: cfg.sandboxExecution,
		Logger:    log.With("component", "sandbox"),
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	ln, err := sandbox.Listen(ctx, cfg.SandboxListen, srv)
	if err != nil {
		return nil, fmt.Errorf("sandbox: listen on %s: %w", cfg.SandboxListen, err)
	}
	if host, _, err := net.SplitHostPort(ln.Addr()); err == nil {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			// /sandbox/* serves what was submitted, without authentication.
			log.Warn("the sandbox API listens beyond loopback; its /sandbox endpoints serve submitted request data unauthenticated", "addr", ln.Addr())
		}
	}
	return &sandboxHandle{srv: srv, ln: ln}, nil
}

func (h *sandboxHandle) Addr() string            { return h.ln.Addr() }
func (h *sandboxHandle) Server() *sandbox.Server { return h.srv }
func (h *sandboxHandle) Close()                  { _ = h.ln.Close() }
