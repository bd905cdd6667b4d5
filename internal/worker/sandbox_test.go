package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// docKey is the request key of docs/lifecycle.md's examples.
const docKey = "lims-S-1234"

// startSandboxMode runs `worker --sandbox` (embedded JetStream, in-process
// sandbox) with extra flags, submits the singleton example of Tencent's
// documentation under docKey, and returns the embedded server's URL and a
// JetStream handle on it.
func startSandboxMode(t *testing.T, extra ...string) (string, jetstream.JetStream) {
	t.Helper()
	args := append([]string{"--sandbox", "--store-dir", filepath.Join(t.TempDir(), "js"), "--embedded-listen", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0", "--tracker-interval", "300ms", "--drain-timeout", "2s", "--log-level", "warn"}, extra...)
	w := startRun(t, args, func(string) string { return "" })
	nc, err := nats.Connect(w.st.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile("../../examples/tencent-docs/singleton.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(js).Publish(context.Background(), client.Request{Key: docKey, Body: body}); err != nil {
		t.Fatal(err)
	}
	return w.st.NATSURL, js
}

// groupEvents returns the group events of docKey stored so far.
func groupEvents(t *testing.T, js jetstream.JetStream) []client.StatusEvent {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, client.DefaultTopology().StatusStream)
	if err != nil {
		return nil // not provisioned yet
	}
	subject := client.DefaultTopology().StatusPrefix + "." + client.KeyToken(docKey) + ".group"
	var out []client.StatusEvent
	for seq := uint64(0); ; {
		m, err := s.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			return out
		}
		var ev client.StatusEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out, seq = append(out, ev), m.Sequence
	}
}

// waitTerminal waits for docKey's terminal group event.
func waitTerminal(t *testing.T, js jetstream.JetStream, within time.Duration) client.StatusEvent {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, ev := range groupEvents(t, js) {
			if ev.Terminal {
				return ev
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no terminal event within %v; group events: %+v", within, groupEvents(t, js))
	return client.StatusEvent{}
}

// The zero-setup mode's runs execute: the example request ends Succeeded
// (or Failed, with the sandbox's message, at a failure rate of 1), and
// with the execution model off it stays Pending.
func TestSandboxModeRunsExecute(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		_, js := startSandboxMode(t, "--sandbox-run-time", "1s", "--sandbox-queue-time", "200ms")
		ev := waitTerminal(t, js, 20*time.Second)
		if ev.Status != "Succeeded" || ev.EndTime == nil {
			t.Errorf("terminal event %+v, want Succeeded with an end time", ev)
		}
	})
	t.Run("failing", func(t *testing.T) {
		_, js := startSandboxMode(t, "--sandbox-run-time", "500ms-1s", "--sandbox-failure-rate", "1")
		ev := waitTerminal(t, js, 20*time.Second)
		if ev.Status != "Failed" || ev.ErrorMessage == "" {
			t.Errorf("terminal event %+v, want Failed with the sandbox's message", ev)
		}
	})
	t.Run("off", func(t *testing.T) {
		_, js := startSandboxMode(t, "--sandbox-run-time", "off")
		deadline := time.Now().Add(20 * time.Second)
		for len(groupEvents(t, js)) == 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second) // several tracker cycles
		evs := groupEvents(t, js)
		if len(evs) != 1 || evs[0].Status != "Pending" {
			t.Errorf("group events %+v, want one Pending event", evs)
		}
	})
}

// TestLifecycleDocCommands runs the shell block of docs/lifecycle.md's
// "Reading events" with the stock nats CLI against a sandbox-mode worker
// whose example request has ended, so the documented commands are known to
// work as written. It needs `nats` on PATH (natscli v0.5.0: .ci/run installs
// it) and skips without. Lines commented "live" subscribe for ever: they
// run for two seconds and must print; "interactive" ones need a terminal
// and are skipped; every other line must exit 0 and print something.
func TestLifecycleDocCommands(t *testing.T) {
	if _, err := exec.LookPath("nats"); err != nil {
		t.Skip("the nats CLI is not on PATH (go install github.com/nats-io/natscli/nats@v0.5.0)")
	}
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skip("jq is not on PATH")
	}
	url, js := startSandboxMode(t, "--sandbox-run-time", "500ms", "--sandbox-queue-time", "100ms")
	waitTerminal(t, js, 20*time.Second)
	var script strings.Builder // the block's assignments, carried to later lines
	for _, cmd := range docCommands(t) {
		if strings.Contains(cmd, "# interactive") {
			continue
		}
		if !strings.HasPrefix(cmd, "nats ") {
			script.WriteString(cmd + "\n")
			continue
		}
		live := strings.Contains(cmd, "# live")
		timeout := 20 * time.Second
		if live {
			timeout = 2 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		c := exec.CommandContext(ctx, "sh", "-c", script.String()+cmd)
		c.Env = append(os.Environ(), "NATS_URL="+url, "NATS_CONTEXT=", "HOME="+t.TempDir())
		// The shell forks nats: stop the whole process group, or a live
		// subscription outlives the shell and holds the output open.
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
		c.WaitDelay = time.Second
		out, err := c.CombinedOutput()
		cancel()
		if (err != nil && !live) || len(strings.TrimSpace(string(out))) == 0 {
			t.Errorf("%s\nfailed: %v\n%s", cmd, err, out)
			continue
		}
		if strings.Contains(cmd, "jq") && !strings.Contains(string(out), `"key":"`+docKey+`"`) {
			t.Errorf("%s\nprinted no terminal event of %s:\n%s", cmd, docKey, out)
		}
	}
}

// docCommands returns the commands of the first sh block after "With the
// stock `nats` CLI" in docs/lifecycle.md, continuation lines joined.
func docCommands(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../docs/lifecycle.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	var cur strings.Builder
	state := 0 // 0: before the section, 1: before the block, 2: in it
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && strings.Contains(line, "With the stock `nats` CLI"):
			state = 1
		case state == 1 && line == "```sh":
			state = 2
		case state == 2 && line == "```":
			if len(cmds) < 5 {
				t.Fatalf("docs/lifecycle.md's nats block has only %d commands", len(cmds))
			}
			return cmds
		case state == 2 && strings.TrimSpace(line) != "" && !strings.HasPrefix(strings.TrimSpace(line), "#"):
			if text, more := strings.CutSuffix(strings.TrimRight(line, " "), "\\"); more {
				cur.WriteString(text)
				continue
			}
			cur.WriteString(line)
			cmds = append(cmds, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	t.Fatal("docs/lifecycle.md has no sh block after \"With the stock `nats` CLI\"")
	return nil
}
