package worker

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

var flagErrHelp = flag.ErrHelp

// startEmbedded starts the zero-setup JetStream server: persistent store,
// loopback only unless --embedded-listen says otherwise, on the standard
// port so `enqueue` and the stock `nats` CLI reach it without flags.
func startEmbedded(cfg *config, log *slog.Logger) (*server.Server, error) {
	host, portText, err := net.SplitHostPort(cfg.EmbeddedListen)
	if err != nil {
		return nil, fmt.Errorf("--embedded-listen: %w", err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("--embedded-listen: port must be a number")
	}
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as its default port
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("--store-dir: %w", err)
	}
	opts := &server.Options{
		ServerName: "omicsq-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true, // the worker owns signal handling and shutdown order
		NoLog:      true,
		MaxPayload: int32(max(cfg.Limits.MaxRequestBytes+64<<10, 1<<20)),
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not start on %s (is the port in use? set --nats-url or --embedded-listen)", cfg.EmbeddedListen)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		log.Warn("embedded NATS server listens beyond loopback, without authentication", "addr", ns.Addr().String())
	} else {
		log.Info("embedded NATS server Started (loopback only)", "url", ns.ClientURL(), "store_dir", cfg.StoreDir)
	}
	return ns, nil
}
