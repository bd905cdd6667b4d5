// Package natsconn opens the NATS connection that the worker and enqueue
// share: it reconnects forever, authenticates with a creds file, an NKey
// seed file, a user and password or a token, speaks TLS with a custom CA and
// a client certificate, and logs disconnects and reconnects without ever
// printing a credential (URLs are logged with their userinfo redacted).
package natsconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// DefaultReconnectWait is the pause between reconnect rounds when
// Options.ReconnectWait is zero. A random jitter of up to half of it (a full
// one with TLS) is added so that a fleet does not reconnect in lockstep.
const DefaultReconnectWait = 2 * time.Second

// Options says where and how to connect. At most one authentication method
// may be set: CredsFile, NKeySeedFile, User with Password, or Token. A URL
// may also carry userinfo (nats://user:pass@host); it is never logged.
type Options struct {
	// URLs is a comma-separated list of server URLs (nats://, tls://).
	URLs string
	// Name is the connection name shown by the server's monitoring.
	Name string
	// CredsFile is the path of a .creds file (user JWT and NKey seed).
	CredsFile string
	// NKeySeedFile is the path of a file holding a user NKey seed (SU...).
	NKeySeedFile string
	// User and Password authenticate with a user name and password; both
	// or neither must be set.
	User     string
	Password string
	// Token is an authentication token.
	Token string
	// CAFile is a PEM bundle of the CAs that verify the server; setting it
	// turns TLS on.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and its key for
	// mutual TLS; both or neither must be set.
	CertFile string
	KeyFile  string
	// InboxPrefix replaces "_INBOX" as the prefix of reply subjects. Pull
	// consumers receive messages on inbox subjects, so a client allowed to
	// subscribe to _INBOX.> could read requests delivered to others; with a
	// private prefix per role, permissions can deny that (docs/security.md).
	InboxPrefix string
	// ReconnectWait is the pause between reconnect rounds; zero means
	// DefaultReconnectWait.
	ReconnectWait time.Duration
}

// Hooks are called from the connection's callback goroutine; they must not
// block. Either may be nil.
type Hooks struct {
	// OnDisconnect is called when an established connection is lost.
	OnDisconnect func()
	// OnReconnect is called when the connection is re-established.
	OnReconnect func()
}

// validate checks the options without touching the network. Errors name
// the option and never hold a secret.
func (o Options) validate() error {
	var errs []error
	if strings.TrimSpace(o.URLs) == "" {
		errs = append(errs, errors.New("natsconn: URLs must not be empty"))
	}
	methods := []string{}
	if o.CredsFile != "" {
		methods = append(methods, "CredsFile")
	}
	if o.NKeySeedFile != "" {
		methods = append(methods, "NKeySeedFile")
	}
	if o.User != "" || o.Password != "" {
		methods = append(methods, "User/Password")
		if o.User == "" || o.Password == "" {
			errs = append(errs, errors.New("natsconn: User and Password must be given together"))
		}
	}
	if o.Token != "" {
		methods = append(methods, "Token")
	}
	if len(methods) > 1 {
		errs = append(errs, fmt.Errorf("natsconn: choose one authentication method, got %s", strings.Join(methods, ", ")))
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		errs = append(errs, errors.New("natsconn: CertFile and KeyFile must be given together"))
	}
	if o.ReconnectWait < 0 {
		errs = append(errs, errors.New("natsconn: ReconnectWait must not be negative"))
	}
	return errors.Join(errs...)
}

// authMethod names the configured method for error messages.
func (o Options) authMethod() string {
	switch {
	case o.CredsFile != "":
		return "CredsFile"
	case o.NKeySeedFile != "":
		return "NKeySeedFile"
	case o.User != "":
		return "User/Password"
	case o.Token != "":
		return "Token"
	}
	for _, u := range splitURLs(o.URLs) {
		if p, err := url.Parse(u); err == nil && p.User != nil {
			return "the credentials in URLs"
		}
	}
	return "no credentials"
}

// natsOptions builds the nats.go options, reading and checking every file
// first so that a bad path or file names its option.
func (o Options) natsOptions() ([]nats.Option, error) {
	wait := o.ReconnectWait
	if wait == 0 {
		wait = DefaultReconnectWait
	}
	opts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(wait),
		nats.ReconnectJitter(wait/2, wait),
		nats.RetryOnFailedConnect(true),
	}
	if o.Name != "" {
		opts = append(opts, nats.Name(o.Name))
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	switch {
	case o.CredsFile != "":
		if err := checkCredsFile(o.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	case o.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("natsconn: NKeySeedFile %s: %w", o.NKeySeedFile, scrub(err))
		}
		opts = append(opts, opt)
	case o.User != "":
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	case o.Token != "":
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("natsconn: CAFile: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("natsconn: CAFile %s: no PEM certificate found", o.CAFile)
		}
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile); err != nil {
			return nil, fmt.Errorf("natsconn: CertFile/KeyFile (%s, %s): %w", o.CertFile, o.KeyFile, err)
		}
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	return opts, nil
}

// checkCredsFile verifies that path holds a user JWT and an NKey seed. The
// contents are never part of an error.
func checkCredsFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("natsconn: CredsFile: %w", err)
	}
	defer clear(data)
	if _, err := nkeys.ParseDecoratedJWT(data); err != nil {
		return fmt.Errorf("natsconn: CredsFile %s: no user JWT found", path)
	}
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		return fmt.Errorf("natsconn: CredsFile %s: no NKey seed found", path)
	}
	kp.Wipe()
	return nil
}

// scrub drops the text of errors that could quote a seed (nkeys parse
// errors do not today; this keeps it that way).
func scrub(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return err
	}
	return errors.New("not a valid NKey user seed file")
}

// Connect connects to o.URLs. It returns once the first connection is
// established; while no server is reachable it keeps trying (every
// ReconnectWait plus jitter) until ctx is done. Credentials or TLS
// settings the server rejects fail at once with an error naming the
// option. The returned connection reconnects forever; disconnects and
// reconnects are logged to log (nil: discarded) and reported to hooks. The
// caller owns the connection and must Close or Drain it.
func Connect(ctx context.Context, o Options, log *slog.Logger, hooks Hooks) (*nats.Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	opts, err := o.natsOptions()
	if err != nil {
		return nil, err
	}
	where := Redact(o.URLs)
	log = log.With("nats", where)
	w := &waiter{connected: make(chan struct{}), closed: make(chan struct{}), failed: make(chan error, 1)}
	opts = append(opts,
		nats.ConnectHandler(func(*nats.Conn) { w.connect() }),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			// Before the first connection this reports each failed
			// attempt; permanent failures end Connect.
			if w.initial() {
				w.attemptFailed(err)
			}
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // Close or Drain by the owner, not a lost connection
			}
			log.Warn("nats disconnected", "error", errText(err))
			if hooks.OnDisconnect != nil {
				hooks.OnDisconnect()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", redactOne(nc.ConnectedUrl()), "reconnects", nc.Stats().Reconnects)
			if hooks.OnReconnect != nil {
				hooks.OnReconnect()
			}
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if w.initial() {
				w.close()
				return
			}
			log.Info("nats connection closed")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats asynchronous error", "subject", sub.Subject, "error", errText(err))
				return
			}
			log.Warn("nats asynchronous error", "error", errText(err))
		}),
	)
	nc, err := nats.Connect(strings.Join(splitURLs(o.URLs), ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("natsconn: connect to %s: %w", where, err)
	}
	if nc.IsConnected() {
		w.connect()
	}
	// Failed attempts inside the reconnect loop (after the server was
	// reached) are only visible as RECONNECTING status changes with
	// LastError set.
	status := nc.StatusChanged(nats.RECONNECTING)
	defer nc.RemoveStatusListener(status)
	if err := nc.LastError(); err != nil {
		w.attemptFailed(err)
	}
	logged := false
	for {
		select {
		case <-w.connected:
			log.Info("nats connected", "server", redactOne(nc.ConnectedUrl()))
			return nc, nil
		case <-status:
			if err := nc.LastError(); err != nil {
				w.attemptFailed(err)
			}
		case err := <-w.failed:
			if permanent(err) {
				nc.Close()
				return nil, rejected(where, o, err)
			}
			if !logged {
				log.Warn("nats not reachable yet, retrying", "error", errText(err))
				logged = true
			} else {
				log.Debug("nats connect attempt failed", "error", errText(err))
			}
		case <-w.closed:
			err := nc.LastError()
			if err == nil {
				err = nats.ErrConnectionClosed
			}
			return nil, rejected(where, o, err)
		case <-ctx.Done():
			last := nc.LastError()
			nc.Close()
			if last != nil {
				if permanent(last) {
					return nil, rejected(where, o, last)
				}
				return nil, fmt.Errorf("natsconn: no connection to %s: %w (last error: %s)", where, ctx.Err(), errText(last))
			}
			return nil, fmt.Errorf("natsconn: no connection to %s: %w", where, ctx.Err())
		}
	}
}

// waiter turns the connection callbacks into channels for Connect.
type waiter struct {
	mu        sync.Mutex
	done      bool // the initial phase is over
	connected chan struct{}
	closed    chan struct{}
	failed    chan error
}

func (w *waiter) initial() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.done
}

func (w *waiter) connect() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.done = true
		close(w.connected)
	}
}

func (w *waiter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.done = true
		close(w.closed)
	}
}

func (w *waiter) attemptFailed(err error) {
	select {
	case w.failed <- err:
	default: // Connect still has an earlier error to look at
	}
}

// permanent reports errors that retrying with the same settings cannot fix:
// rejected credentials and TLS failures.
func permanent(err error) bool {
	for _, target := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked,
		nats.ErrAccountAuthExpired, nats.ErrNkeysNotSupported, nats.ErrSecureConnRequired,
		nats.ErrSecureConnWanted, nats.ErrTLS} {
		if errors.Is(err, target) {
			return true
		}
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return true
	}
	return serverCertRejected(err) || clientCertRejected(err)
}

// serverCertRejected reports that we did not trust the server.
func serverCertRejected(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	_, ok := errors.AsType[x509.CertificateInvalidError](err)
	return ok
}

// clientCertRejected reports a TLS alert from the server ("certificate
// required", "bad certificate", "unknown certificate authority"): it
// refused our client certificate.
func clientCertRejected(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "remote error"
}

// rejected explains a permanent failure, naming the options to check.
func rejected(where string, o Options, err error) error {
	tlsOpts := "CAFile, CertFile/KeyFile"
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired),
		errors.Is(err, nats.ErrNkeysNotSupported):
		return fmt.Errorf("natsconn: %s rejected the credentials (%s): %w", where, o.authMethod(), err)
	case errors.Is(err, nats.ErrSecureConnRequired):
		return fmt.Errorf("natsconn: %s requires TLS (set CAFile or use a tls:// URL): %w", where, err)
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("natsconn: %s does not offer TLS but TLS options are set (%s): %w", where, tlsOpts, err)
	case serverCertRejected(err):
		return fmt.Errorf("natsconn: TLS with %s failed: the server's certificate is not trusted (check CAFile): %w", where, err)
	case clientCertRejected(err):
		return fmt.Errorf("natsconn: TLS with %s failed: the server refused the client certificate (check CertFile/KeyFile): %w", where, err)
	case errors.Is(err, nats.ErrTLS):
		// TLS 1.3: the client finishes its handshake before the server
		// checks the client certificate, so a refusal can arrive as a
		// closed connection instead of an alert.
		return fmt.Errorf("natsconn: TLS with %s failed: the server closed the connection after the handshake, usually because it refused the client certificate (check CertFile/KeyFile): %w", where, err)
	case permanent(err):
		return fmt.Errorf("natsconn: TLS with %s failed (check %s): %w", where, tlsOpts, err)
	}
	return fmt.Errorf("natsconn: connect to %s: %w", where, err)
}

// errText renders err for logs. nats.go errors hold no credentials, but
// URL errors can quote a URL, so any URL in the text is redacted.
func errText(err error) string {
	if err == nil {
		return ""
	}
	fields := strings.Fields(err.Error())
	for i, f := range fields {
		if strings.Contains(f, "://") && strings.Contains(f, "@") {
			fields[i] = redactOne(strings.Trim(f, `"',;`))
		}
	}
	return strings.Join(fields, " ")
}

func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// Redact returns the comma-separated URLs in s with any userinfo (user,
// password or token) replaced by "redacted", safe to log or print.
func Redact(s string) string {
	urls := splitURLs(s)
	for i, u := range urls {
		urls[i] = redactOne(u)
	}
	return strings.Join(urls, ",")
}

func redactOne(s string) string {
	if !strings.Contains(s, "://") {
		// nats.go accepts host:port; a bare "user:pass@host" is possible
		// too, so cut anything before an '@'.
		if i := strings.LastIndex(s, "@"); i >= 0 {
			return "redacted@" + s[i+1:]
		}
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		scheme, rest, _ := strings.Cut(s, "://")
		if i := strings.LastIndex(rest, "@"); i >= 0 {
			return scheme + "://redacted@" + rest[i+1:]
		}
		return scheme + "://(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("redacted")
	}
	return u.String()
}
