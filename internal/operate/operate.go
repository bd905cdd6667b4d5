// Package operate holds enqueue's operator commands over the dead-letter
// stream and the resource breakers (enqueue dlq, enqueue breaker), shared by
// the CLI and the console, and what they and enqueue's publishing share:
// the connection and topology settings, the session, and the output helpers.
package operate

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/settings"
	"github.com/omicsq/omicsq/internal/submit"
)

// Exit statuses of enqueue's commands.
const (
	ExitOK     = 0
	ExitFailed = 1 // invalid input, a publish or connection error, a dead letter
	ExitUsage  = 64
)

// publishTimeout bounds one publish (the server's ack included).
const publishTimeout = 10 * time.Second

// Config holds the settings every enqueue command shares.
type Config struct {
	Conn           natsconn.Options
	ConnectTimeout time.Duration
	Topo           queue.Topology
	Limits         submit.Limits
	MaxRequests    int
}

// NewConfig returns a Config of defaults, for the flags to set.
func NewConfig() *Config {
	return &Config{Conn: natsconn.Options{Name: "omicsq-enqueue"}, Topo: queue.DefaultTopology(), Limits: submit.DefaultLimits()}
}

// ConnFlags are the NATS connection flags the worker shares (a server is
// needed here, so the URL has a default) and how long to wait for it.
func (c *Config) ConnFlags() []settings.Setting {
	return append(settings.NATS(&c.Conn, "nats://127.0.0.1:4222", "NATS server URLs, comma-separated"),
		settings.Row("connect-timeout", "OMICSQ_CONNECT_TIMEOUT", "how long to wait for the NATS connection", settings.Duration(&c.ConnectTimeout, 10*time.Second)))
}

// TopoFlags name the streams and subjects as the worker's flags do, but
// for the subject's spelling: --subject here.
func (c *Config) TopoFlags() []settings.Setting {
	requests, outcomes := settings.Topology(&c.Topo.Topology, "subject")
	return append(requests, outcomes...)
}

// LimitFlags bound what one run reads: the message limit the worker
// shares, and how many requests.
func (c *Config) LimitFlags() []settings.Setting {
	return []settings.Setting{settings.MessageLimit(&c.Limits),
		settings.Row("max-requests", "OMICSQ_MAX_REQUESTS", "most requests (JSON items, JSONL lines, CSV rows) read in one run, all files together; 0: no bound", settings.Int(&c.MaxRequests, 100000))}
}

// Validate checks the shared settings, naming them by flag.
func (c *Config) Validate() error {
	var errs []error
	if c.ConnectTimeout <= 0 {
		errs = append(errs, errors.New("--connect-timeout must be positive"))
	}
	t := c.Topo
	for _, n := range []struct{ flag, value string }{
		{"requests-stream", t.RequestsStream}, {"subject", t.RequestsSubject}, {"results-stream", t.ResultsStream},
		{"results-prefix", t.ResultsPrefix}, {"dlq-stream", t.DLQStream}, {"dlq-prefix", t.DLQPrefix},
	} {
		if strings.TrimSpace(n.value) == "" {
			errs = append(errs, fmt.Errorf("--%s must not be empty", n.flag))
		}
	}
	if c.Limits.MaxRequestBytes < 1 {
		errs = append(errs, errors.New("--max-message-bytes must be >= 1"))
	}
	if c.MaxRequests < 0 {
		errs = append(errs, errors.New("--max-requests must be >= 0 (0: no bound)"))
	}
	return errors.Join(errs...)
}

// Session is one command's connection: NATS, JetStream and the client.
type Session struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Client *client.Client
}

// Connect opens a session; log messages below level are dropped.
func Connect(ctx context.Context, c *Config, stderr io.Writer, level slog.Level) (*Session, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, c.Conn, log, natsconn.Hooks{})
	if err != nil {
		return nil, err
	}
	// An async publish whose ack never comes is dropped after this, so a
	// lost ack cannot pile up toward the client's pending limit.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cl := client.New(js, client.WithTopology(c.Topo.Topology), client.WithPublishTimeout(publishTimeout))
	return &Session{NC: nc, JS: js, Client: cl}, nil
}

// Close closes the connection.
func (s *Session) Close() { s.NC.Close() }

// RequireStream looks a stream up, explaining the usual reason it is
// missing: enqueue never creates streams, the worker does.
func (s *Session) RequireStream(ctx context.Context, name string) error {
	_, err := s.JS.Stream(ctx, name)
	return missing("stream", name, err, jetstream.ErrStreamNotFound)
}

// bucket opens a KV bucket, explaining the usual reason it is missing as
// RequireStream does.
func (s *Session) bucket(ctx context.Context, name string) (jetstream.KeyValue, error) {
	kv, err := s.JS.KeyValue(ctx, name)
	return kv, missing("bucket", name, err, jetstream.ErrBucketNotFound)
}

// missing explains err, the failed lookup of the stream or bucket (kind)
// name; notFound is the error of one that does not exist.
func missing(kind, name string, err, notFound error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, notFound):
		return fmt.Errorf("%s %s not found: is a worker running? (it creates the %ss)", kind, name, kind)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%s %s: JetStream is not enabled on this server or account: %w", kind, name, err)
	}
	return fmt.Errorf("%s %s: %w", kind, name, err)
}

// subcommands are the subcommands of one operator command; each method is
// given the subcommand's name.
type subcommands interface {
	// flags are the subcommand's flags, the connection's included.
	flags(sub string) []settings.Setting
	// check checks the positional arguments and the flags once parsed.
	check(sub string, positional []string) error
	// run carries the subcommand out over an open session.
	run(ctx context.Context, sub string, s *Session, stdout, stderr io.Writer) int
}

// command is an operator command: enqueue dlq, enqueue breaker.
type command struct {
	name, usage string // as messages name it ("enqueue dlq"); its usage text
	subs        []string
	c           *Config // what the subcommands' flags set
	op          subcommands
}

// run handles help and unknown subcommands, parses the subcommand's flags
// (preset by the environment) and arguments, checks them (usage errors
// exit 64, before any connection), connects and runs the subcommand.
func (cmd command) run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, cmd.usage)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	sub := args[0]
	if !slices.Contains(cmd.subs, sub) {
		fmt.Fprintf(stderr, "%s: unknown command %q\n\n%s", cmd.name, submit.SafeFieldName(sub), cmd.usage)
		return ExitUsage
	}
	name := cmd.name + " " + sub
	pos, err := settings.ParseCommand(name, cmd.usage, stderr, cmd.op.flags(sub), args[1:], getenv)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err == nil {
		err = cmd.c.Validate()
	}
	if err == nil {
		err = cmd.op.check(sub, pos)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", "; "))
		return ExitUsage
	}
	s, err := Connect(ctx, cmd.c, stderr, slog.LevelWarn)
	if err != nil {
		return failed(stderr, name, err)
	}
	defer s.Close()
	return cmd.op.run(ctx, sub, s, stdout, stderr)
}

// failed reports err of the command named name: exit status 1.
func failed(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	return ExitFailed
}

// table prints rows under a header, aligned, or with asJSON one JSON
// object a row and no header.
type table struct {
	tw  *tabwriter.Writer
	enc *json.Encoder
}

func newTable(w io.Writer, asJSON bool, header ...string) *table {
	if asJSON {
		return &table{enc: json.NewEncoder(w)}
	}
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	return t
}

// row prints v as JSON, or its cells.
func (t *table) row(v any, cells ...string) error {
	if t.enc != nil {
		return t.enc.Encode(v)
	}
	_, err := fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
	return err
}

func (t *table) flush() {
	if t.tw != nil {
		t.tw.Flush()
	}
}

// Printable replaces control characters in text from the streams, so a
// message cannot drive the terminal.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
