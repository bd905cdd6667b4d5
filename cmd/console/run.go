package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/omicsq/omicsq/internal/console"
	"github.com/omicsq/omicsq/internal/operate"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/settings"
)

const usage = `Usage: console [flags]

Serves the omicsq operator console. Authentication is always on: a token from
--auth-token-file (Bearer, or HTTP Basic with the token as password), and/or the
identity header of an authenticating reverse proxy (--auth-proxy-header). Without
either, a random token is written to a file in the user's config directory and
its path (not the token) is logged. See docs/console.md.

`

type config struct {
	*operate.Config
	listen, tokenFile, proxyHeader, auditLog string
	readOnly                                 bool
	runsBucket                               string
	allowRemote                              bool
}

func flags(c *config) []settings.Setting {
	t := c.Topo
	table := append(c.ConnFlags(), c.TopoFlags()...)
	table = append(table, settings.MessageLimit(&c.Limits),
		settings.LedgerBucket(&c.Topo.LedgerBucket, t.LedgerBucket, " (the redrive guard reads it)"),
		settings.Row("control-bucket", "OMICSQ_CONTROL_BUCKET", "KV bucket of the fleet-wide pause flag", settings.String(&c.Topo.ControlBucket, t.ControlBucket)),
		settings.Row("runs-bucket", "OMICSQ_RUNS_BUCKET", "KV bucket of the tracker's run groups", settings.String(&c.runsBucket, t.RunsBucket)),
		settings.Row("listen", "OMICSQ_CONSOLE_LISTEN", "address to serve on; a non-loopback address needs --allow-remote", settings.String(&c.listen, "127.0.0.1:8090")),
		settings.Row("allow-remote", "OMICSQ_CONSOLE_ALLOW_REMOTE", "allow --listen on a non-loopback address (behind TLS and a proxy: see docs/console.md)", settings.Bool(&c.allowRemote, false)),
		settings.Row("auth-token-file", "OMICSQ_CONSOLE_TOKEN_FILE", "file holding the shared secret operators authenticate with", settings.String(&c.tokenFile, "")),
		settings.Row("auth-proxy-header", "OMICSQ_CONSOLE_PROXY_HEADER", "header an authenticating reverse proxy sets to the operator's identity (e.g. X-Forwarded-Email)", settings.String(&c.proxyHeader, "")),
		settings.Row("read-only", "OMICSQ_CONSOLE_READ_ONLY", "refuse every action (redrive, resume)", settings.Bool(&c.readOnly, false)),
		settings.Row("audit-log", "OMICSQ_CONSOLE_AUDIT_LOG", "file the audit records (JSON lines) are appended to; empty: standard error", settings.String(&c.auditLog, "")),
	)
	return table
}

func run(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	c := &config{Config: operate.NewConfig()}
	c.Conn.Name = "omicsq-console"
	if _, err := settings.ParseCommand("console", usage, stderr, flags(c), args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return operate.ExitOK
		}
		return operate.ExitUsage
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if err := c.check(); err != nil {
		fmt.Fprintf(stderr, "console: %v\n", err)
		return operate.ExitUsage
	}
	auth, err := c.auth(log)
	if err != nil {
		fmt.Fprintf(stderr, "console: %v\n", err)
		return operate.ExitFailed
	}
	audit, closeAudit, err := c.audit(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "console: %v\n", err)
		return operate.ExitFailed
	}
	defer closeAudit()
	if err := serve(ctx, c, auth, audit, log); err != nil {
		fmt.Fprintf(stderr, "console: %v\n", err)
		return operate.ExitFailed
	}
	return operate.ExitOK
}

func (c *config) check() error {
	if err := c.Validate(); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(c.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %v", c.listen, err)
	}
	if ip := net.ParseIP(host); !c.allowRemote && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %s is not a loopback address: add --allow-remote (and put TLS and authentication in front, docs/console.md)", c.listen)
	}
	return nil
}

// auth reads the token file, or makes one when no authentication is
// configured, so the console is never open to whoever reaches the port.
func (c *config) auth(log *slog.Logger) (console.Auth, error) {
	a := console.Auth{ProxyHeader: c.proxyHeader}
	if c.tokenFile == "" && c.proxyHeader == "" {
		path, err := generatedTokenFile()
		if err != nil {
			return a, fmt.Errorf("no --auth-token-file or --auth-proxy-header, and no token could be generated: %w", err)
		}
		log.Info("no authentication configured: generated a token (user any, password the token) in a file", "token_file", path)
		c.tokenFile = path
	}
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return a, fmt.Errorf("--auth-token-file: %w", err)
		}
		a.Token = strings.TrimSpace(string(b))
		if len(a.Token) < 16 {
			return a, fmt.Errorf("--auth-token-file %s: the token must be at least 16 characters", c.tokenFile)
		}
	}
	return a, nil
}

func generatedTokenFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "omicsq")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "console-token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return path, nil // keep the token of an earlier start
	}
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(hex.EncodeToString(buf)+"\n"), 0o600)
}

func (c *config) audit(stderr io.Writer) (*slog.Logger, func(), error) {
	if c.auditLog == "" {
		return slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "audit"), func() {}, nil
	}
	f, err := os.OpenFile(c.auditLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--audit-log: %w", err)
	}
	return slog.New(slog.NewJSONHandler(f, nil)), func() { _ = f.Close() }, nil
}

func serve(ctx context.Context, c *config, auth console.Auth, audit, log *slog.Logger) error {
	s, err := operate.Connect(ctx, c.Config, io.Discard, slog.LevelWarn)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	index := console.NewIndex(s.JS, c.Topo.Topology, log)
	runs := console.NewRunsIndex(s.JS, c.runsBucket, log)
	batches := console.NewBatchesIndex(s.JS, c.Topo.BatchesBucket, log)
	srv, err := console.New(console.Config{JS: s.JS, Client: s.Client, Topology: c.Topo, Limits: c.Limits,
		RateLimitBucket: ratelimit.DefaultBucket, Index: index, Runs: runs, Batches: batches, Auth: auth, ReadOnly: c.readOnly, Audit: audit, Log: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	log.Info("console listening", "address", "http://"+ln.Addr().String(), "read_only", c.readOnly)
	var wg sync.WaitGroup
	wg.Go(func() { index.Run(ctx, 10*time.Second) })
	wg.Go(func() { runs.Run(ctx) })
	wg.Go(func() { batches.Run(ctx) })
	err = srv.Serve(ctx, ln)
	cancel()
	wg.Wait()
	return err
}
