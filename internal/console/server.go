// Package console is the operators' web console: the backlog, the limiter,
// the pause flag, requests by key, runs by status and the dead-letter queue
// with redrive. It reads the JetStream streams and KV buckets the worker
// fleet writes (no second source of truth) and changes them only through
// the rules the CLI uses (internal/redrive for redrive, internal/pause for
// resume). Every action needs an authenticated operator, a CSRF token and a
// console that is not read-only, and is written to the audit log (who,
// what, how many; never request content).
package console

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
)

//go:embed assets
var assets embed.FS

// Auth says who may use the console. At least one of Token and ProxyHeader
// must be set; with both, both are required.
type Auth struct {
	// Token is the shared secret: "Authorization: Bearer <token>", or HTTP
	// Basic with the token as the password (the user name is then the
	// operator's name in the audit log).
	Token string
	// ProxyHeader names the header a trusted authenticating reverse proxy
	// (oauth2-proxy, an ingress with OIDC) sets to the operator's identity,
	// e.g. X-Forwarded-Email. Only safe when nothing but the proxy can reach
	// the console (see docs/console.md).
	ProxyHeader string
}

// Config configures a Server.
type Config struct {
	JS       jetstream.JetStream
	Client   *client.Client
	Topology queue.Topology
	Limits   submit.Limits
	// RateLimitBucket holds the fleet's shared limiter state.
	RateLimitBucket string
	Index           *Index
	Runs            *RunsIndex
	Batches         *BatchesIndex
	Auth            Auth
	// ReadOnly refuses every action (403) and hides their buttons.
	ReadOnly bool
	// Audit receives one record per action.
	Audit *slog.Logger
	Log   *slog.Logger
	Now   func() time.Time
}

// Server serves the console.
type Server struct {
	cfg     Config
	csrfKey []byte
	pages   *template.Template
	view    *overviewCache
	// actions tracks actions in progress: Serve waits for them before it
	// returns, so the NATS connection is never closed under a redrive.
	actions sync.WaitGroup
	// planning lets one redrive plan read the DLQ at a time.
	planning chan struct{}
}

// ErrNoAuth means the configuration lets anybody in.
var ErrNoAuth = errors.New("console: no authentication configured (a token or a proxy header is required)")

// New returns a server; it does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Auth.Token == "" && cfg.Auth.ProxyHeader == "" {
		return nil, ErrNoAuth
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Log
	}
	key, err := csrfKey(cfg.Auth.Token)
	if err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, csrfKey: key, pages: pages, planning: make(chan struct{}, 1)}
	s.view = &overviewCache{load: s.loadOverview, ttl: 2 * time.Second}
	return s, nil
}

// Handler is the console's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(mustSub(assets, "assets/static"))))
	page := func(pattern string, h func(http.ResponseWriter, *http.Request, string)) {
		mux.Handle(pattern, s.authenticated(h))
	}
	page("GET /{$}", s.overviewPage)
	page("GET /api/overview", s.overviewJSON)
	page("GET /dlq", s.dlqPage)
	page("GET /api/dlq", s.dlqJSON)
	page("GET /dlq/{seq}", s.deadLetterPage)
	page("GET /requests", s.requestPage)
	page("GET /runs", s.runsPage)
	page("GET /batches", s.batchesPage)
	page("GET /batch", s.batchPage)
	page("POST /batch/cancel", s.action("cancel_batch", s.cancelBatch))
	page("POST /dlq/preview", s.action("preview", s.previewRedrive))
	page("POST /dlq/{seq}/reveal", s.action("reveal", s.revealDeadLetter))
	page("POST /dlq/redrive", s.action("redrive", s.redrive))
	page("POST /resume", s.action("resume", s.resume))
	// Cross-origin browser requests that change state are refused before
	// the CSRF token is even looked at (Sec-Fetch-Site / Origin).
	return securityHeaders(http.NewCrossOriginProtection().Handler(mux))
}

// securityHeaders keeps pages from being framed or from loading anything
// from elsewhere: the console ships everything it needs in the binary.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// authenticated runs h with the operator's name, or answers 401.
func (s *Server) authenticated(h func(http.ResponseWriter, *http.Request, string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, ok := s.principal(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="omicsq console", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		h(w, r, who)
	})
}

func (s *Server) principal(r *http.Request) (string, bool) {
	who := ""
	if a := s.cfg.Auth; a.ProxyHeader != "" {
		who = strings.TrimSpace(r.Header.Get(a.ProxyHeader))
		if who == "" {
			return "", false
		}
	}
	if tok := s.cfg.Auth.Token; tok != "" {
		given, user := "", ""
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			given = strings.TrimSpace(b)
		} else if u, p, ok := r.BasicAuth(); ok {
			given, user = p, u
		}
		// Digests of equal length: the comparison tells nothing of the
		// token's length either.
		g, w := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(tok))
		if subtle.ConstantTimeCompare(g[:], w[:]) != 1 {
			return "", false
		}
		if who == "" {
			who = cmp.Or(printable(user), "token")
		}
	}
	return who, true
}

// csrfKey derives the CSRF key from the shared token, so that replicas of
// the console (and a restarted one) accept each other's forms; without a
// token (proxy mode) it is random, and each replica has its own.
func csrfKey(token string) ([]byte, error) {
	if token != "" {
		m := hmac.New(sha256.New, []byte(token))
		m.Write([]byte("omicsq console CSRF key"))
		return m.Sum(nil), nil
	}
	key := make([]byte, 32)
	_, err := rand.Read(key)
	return key, err
}

// csrfToken is bound to the operator and to this process: a page served by
// this console carries it, a page elsewhere cannot know it.
func (s *Server) csrfToken(who string) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(who))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// action wraps a state-changing handler: read-only refuses it, a missing or
// wrong CSRF token is 403, and the outcome is audited by h.
func (s *Server) action(name string, h func(http.ResponseWriter, *http.Request, string)) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, who string) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		given := r.PostForm.Get("csrf")
		if given == "" {
			given = r.Header.Get("X-CSRF-Token")
		}
		if !hmac.Equal([]byte(given), []byte(s.csrfToken(who))) {
			s.cfg.Audit.Warn("console action refused", "who", who, "action", name, "why", "csrf")
			http.Error(w, "missing or invalid CSRF token", http.StatusForbidden)
			return
		}
		if s.cfg.ReadOnly && !readsOnly[name] {
			s.cfg.Audit.Warn("console action refused", "who", who, "action", name, "why", "read-only")
			http.Error(w, "the console is read-only", http.StatusForbidden)
			return
		}
		// An action runs to its end even if the operator's connection (or a
		// proxy's timeout) ends first: a redrive stopped half-way would leave
		// the operator guessing. Its own deadline bounds it.
		s.actions.Add(1)
		defer s.actions.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), actionTimeout)
		defer cancel()
		h(w, r.WithContext(ctx), who)
	}
}

// readsOnly are the POST actions that change nothing (a read-only console
// allows them): the redrive preview, and revealing a dead letter's inputs,
// a POST so that a link from elsewhere cannot make an audit record.
var readsOnly = map[string]bool{"preview": true, "reveal": true}

// actionTimeout bounds one action (a redrive of the largest selection).
const actionTimeout = 10 * time.Minute

// Serve answers on ln until ctx ends, then stops taking requests, lets
// pages finish within 5 s and waits for actions in progress.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	s.actions.Wait()
	return err
}

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}
