package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// shutdownTimeout bounds Listener.Close's graceful phase.
const shutdownTimeout = 5 * time.Second

// Listener serves a Server over plain HTTP on a TCP address. It owns its
// serving goroutine; Shutdown and Close wait for it.
type Listener struct {
	srv     *http.Server
	ln      *onceCloseListener
	addr    string
	cancel  context.CancelFunc // ends calls held by faults on this listener
	served  chan struct{}      // closed when Serve returned
	serveEr error              // Serve's error other than ErrServerClosed; read after served

	mu    sync.Mutex
	fresh map[net.Conn]bool // connections that have not sent a request yet
}

// onceCloseListener lets Shutdown close the listener before http.Server
// does without the second Close reporting an error.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// Listen binds addr (host:port; port 0 picks a free one) and serves s on it
// until Shutdown or Close. ctx bounds the bind only; it does not stop the
// server.
func Listen(ctx context.Context, addr string, s *Server) (*Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sandbox: listen: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	l := &Listener{
		ln:    &onceCloseListener{Listener: ln},
		fresh: make(map[net.Conn]bool),
	}
	l.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		// Calls held by faults watch this to end when the listener shuts
		// down (Shutdown waits for active handlers).
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(base, listenerDoneKey{}, base.Done())
		},
		ErrorLog:  slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnState: l.trackFresh,
	}
	l.addr, l.cancel, l.served = ln.Addr().String(), cancel, make(chan struct{})
	go func() {
		defer close(l.served)
		// Shutdown closes the listener itself first, so Serve may see
		// net.ErrClosed instead of ErrServerClosed.
		if err := l.srv.Serve(l.ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			l.serveEr = err
		}
	}()
	return l, nil
}

func (l *Listener) trackFresh(c net.Conn, state http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if state == http.StateNew {
		l.fresh[c] = true
	} else {
		delete(l.fresh, c)
	}
}

// Addr returns the bound address as host:port, e.g. "127.0.0.1:40123".
func (l *Listener) Addr() string { return l.addr }

// Shutdown stops accepting connections, ends calls held by latency and
// hang faults, and waits for in-flight calls to finish or ctx to end (then
// it closes the remaining connections). It returns ctx's error if that
// happened, else the error that stopped serving, if any.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.cancel()
	// http.Server.Shutdown treats a connection that never sent a request
	// as busy for its first 5 seconds; clients' transports often hold
	// such spare connections. Stop accepting, then close those.
	_ = l.ln.Close()
	l.mu.Lock()
	for c := range l.fresh {
		_ = c.Close()
	}
	l.mu.Unlock()
	err := l.srv.Shutdown(ctx)
	if err != nil {
		_ = l.srv.Close()
	}
	<-l.served
	if err != nil {
		return fmt.Errorf("sandbox: shutdown: %w", err)
	}
	if l.serveEr != nil {
		return fmt.Errorf("sandbox: serve: %w", l.serveEr)
	}
	return nil
}

// Close is Shutdown with a 5-second grace period.
func (l *Listener) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return l.Shutdown(ctx)
}
