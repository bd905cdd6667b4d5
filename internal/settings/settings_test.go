package settings_test

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/settings"
	"github.com/omicsq/omicsq/internal/submit"
)

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseInterleavesFlagsAndArguments(t *testing.T) {
	var wait bool
	var subject string
	table := []settings.Setting{
		{Flag: "wait", Bind: settings.Bool(&wait, false)},
		{Flag: "subject", Env: "SUBJECT", Bind: settings.String(&subject, "")},
	}
	pos, err := settings.Parse(newFlagSet(), table, []string{"a.json", "--wait", "-", "--subject", "x.y", "--", "--not-a-flag"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !wait || subject != "x.y" || strings.Join(pos, " ") != "a.json - --not-a-flag" {
		t.Errorf("wait %v subject %q positional %q", wait, subject, pos)
	}
}

func TestParseEnvironmentPresetsAndFlagsWin(t *testing.T) {
	var n int
	var d time.Duration
	var rate float64
	table := []settings.Setting{
		{Flag: "n", Env: "N", Bind: settings.Int(&n, 1)},
		{Flag: "d", Env: "D", Bind: settings.Duration(&d, time.Second)},
		{Flag: "rate", Env: "RATE", Bind: settings.Float(&rate, 0)},
	}
	env := envOf(map[string]string{"N": "5", "D": "2m", "RATE": "0.5"})
	if _, err := settings.Parse(newFlagSet(), table, []string{"--d", "3s"}, env); err != nil {
		t.Fatal(err)
	}
	if n != 5 || d != 3*time.Second || rate != 0.5 {
		t.Errorf("n %d d %v rate %v; want 5 from the environment, 3s from the flag, 0.5", n, d, rate)
	}
}

// An invalid value in the environment is refused naming the variable, the
// flag and what it accepts, never the value: it may be a secret.
func TestParseInvalidEnvironmentNamesTheVariableOnly(t *testing.T) {
	var n int
	var on bool
	for _, tc := range []struct {
		table []settings.Setting
		env   map[string]string
		want  string
	}{
		{[]settings.Setting{{Flag: "n", Env: "N", Bind: settings.Int(&n, 0)}}, map[string]string{"N": "s3cret"}, "environment N (--n): want an integer"},
		{[]settings.Setting{{Flag: "on", Env: "ON", Bind: settings.Bool(&on, false)}}, map[string]string{"ON": "s3cret"}, "environment ON (--on): want true or false"},
	} {
		_, err := settings.Parse(newFlagSet(), tc.table, nil, envOf(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error %v, want it to contain %q and not the value", err, tc.want)
		}
	}
}

func TestParseUsageNamesTheVariable(t *testing.T) {
	var a, b string
	fs := newFlagSet()
	table := []settings.Setting{
		{Flag: "a", Env: "A", Usage: "the a", Bind: settings.String(&a, "")},
		{Flag: "b", Usage: "the b", Bind: settings.String(&b, "")},
	}
	if _, err := settings.Parse(fs, table, []string{"--help"}, envOf(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help = %v, want flag.ErrHelp", err)
	}
	if got := fs.Lookup("a").Usage; got != "the a (env A)" {
		t.Errorf("usage of a: %q", got)
	}
	if got := fs.Lookup("b").Usage; got != "the b" {
		t.Errorf("usage of b: %q", got)
	}
}

// The shared rows bind where they say, with the contract's defaults.
func TestSharedRows(t *testing.T) {
	var conn natsconn.Options
	var topo client.Topology
	var lim submit.Limits
	requests, outcomes := settings.Topology(&topo, "subject")
	table := append(settings.NATS(&conn, "nats://default:4222", "servers"), requests...)
	table = append(table, outcomes...)
	table = append(table, settings.MessageLimit(&lim))
	env := envOf(map[string]string{"NATS_INBOX_PREFIX": "_INBOX.me", "OMICSQ_REQUESTS_SUBJECT": "env.req"})
	if _, err := settings.Parse(newFlagSet(), table, []string{"--nats-token", "tok", "--dlq-prefix", "x.dlq"}, env); err != nil {
		t.Fatal(err)
	}
	if conn.URLs != "nats://default:4222" || conn.Token != "tok" || conn.InboxPrefix != "_INBOX.me" {
		t.Errorf("connection %+v", conn)
	}
	want := client.DefaultTopology()
	want.RequestsSubject, want.DLQPrefix = "env.req", "x.dlq"
	if topo != want {
		t.Errorf("topology %+v, want %+v", topo, want)
	}
	if lim != submit.DefaultLimits() {
		t.Errorf("limits %+v, want the default", lim)
	}
	if len(requests) != 2 || requests[1].Flag != "subject" || requests[1].Env != "OMICSQ_REQUESTS_SUBJECT" {
		t.Errorf("requests rows %+v: want the stream, then the subject under the caller's flag name", requests)
	}
}

// Rows written as a table, a repeatable flag, and a command's usage.
func TestRowStringsAndParseCommand(t *testing.T) {
	var sets []string
	var name string
	table := []settings.Setting{
		settings.Row("set", "", "an edit (repeatable)", settings.Strings(&sets)),
		settings.Row("name", "NAME", "the name", settings.String(&name, "x")),
	}
	var out strings.Builder
	pos, err := settings.ParseCommand("cmd sub", "Usage: cmd sub\n", &out, table,
		[]string{"--set", "a=1", "arg", "--set", "b=2"}, envOf(map[string]string{"NAME": "env"}))
	if err != nil || strings.Join(sets, " ") != "a=1 b=2" || name != "env" || strings.Join(pos, " ") != "arg" || out.Len() != 0 {
		t.Fatalf("sets %q name %q positional %q err %v output %q", sets, name, pos, err, out.String())
	}
	sets = nil
	_, err = settings.ParseCommand("cmd sub", "Usage: cmd sub\n", &out, table, []string{"--help"}, envOf(nil))
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help = %v, want flag.ErrHelp", err)
	}
	want := "Usage: cmd sub\n  -name string\n    \tthe name (env NAME) (default \"x\")\n  -set value\n    \tan edit (repeatable)\n"
	if out.String() != want {
		t.Errorf("usage\n%q, want\n%q", out.String(), want)
	}
	out.Reset()
	if _, err := settings.ParseCommand("cmd sub", "Usage: cmd sub\n", &out, table, []string{"--nope"}, envOf(nil)); err == nil ||
		!strings.HasPrefix(out.String(), "flag provided but not defined: -nope\nUsage: cmd sub\n") {
		t.Errorf("unknown flag: %v\n%s", err, out.String())
	}
}
