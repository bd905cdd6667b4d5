package faultsuite

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/tracker"
	"github.com/omicsq/omicsq/sandbox"
)

// lifecycleMessages are the sandbox's failure messages: distinct texts, one
// with a colon (enqueue prints "Status: message").
var lifecycleMessages = []string{
	"OOMKilled: exit 137",
	"task align failed with exit code 1",
	"disk quota exceeded on /cromwell_root",
	"preempted: spot instance reclaimed",
}

// lifeRequest is one row of the acceptance test's sample sheet.
type lifeRequest struct {
	key, name string
	row       int      // the CSV row as enqueue names it (the header is row 1)
	table     string   // TableId of a batch; "" for a singleton
	rows      []string // the batch's TableRowUuids
}

// lifecycleRequests is the workload size: 1,000 (issue 13's acceptance),
// 200 under -short, or OMICSQ_LIFECYCLE_REQUESTS for a local run.
func lifecycleRequests(t *testing.T) int {
	if v := os.Getenv("OMICSQ_LIFECYCLE_REQUESTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			t.Fatalf("OMICSQ_LIFECYCLE_REQUESTS=%q: want a number of at least 20", v)
		}
		return n
	}
	if testing.Short() {
		return 200
	}
	return 1000
}

// lifecycleWorkload draws n requests: about 15% table batches of 2-5 rows,
// the rest singletons.
func lifecycleWorkload(n int) []lifeRequest {
	rng := rand.New(rand.NewPCG(13, 0x11fe))
	out := make([]lifeRequest, n)
	for i := range out {
		r := lifeRequest{key: fmt.Sprintf("life-%04d", i), name: fmt.Sprintf("life-sample-%04d", i), row: i + 2}
		if rng.Float64() < 0.15 {
			r.table = fmt.Sprintf("tab-life-%04d", i)
			for j := range 2 + rng.IntN(4) {
				r.rows = append(r.rows, fmt.Sprintf("row-%04d-%d", i, j))
			}
		}
		out[i] = r
	}
	return out
}

// writeSheet writes reqs as a CSV sample sheet (docs/enqueue.md) and
// returns its path.
func writeSheet(t *testing.T, reqs []lifeRequest) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "samples.csv")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"key", "Name", "ApplicationId", "EnvironmentId", "ProjectId", "InputBase64", "TableId", "TableRowUuids", "FailureMode", "UseCallCache"})
	for _, r := range reqs {
		input := base64.StdEncoding.EncodeToString([]byte(`{"wf.sample":"` + r.name + `"}`))
		_ = w.Write([]string{r.key, r.name, appID, envID, projID, input, r.table, strings.Join(r.rows, ";"), "NoNewCalls", "true"})
	}
	w.Flush()
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return path
}

// statusMsg is one message stored in the status stream.
type statusMsg struct {
	seq        uint64
	subject    string
	key, msgID string // headers
	ev         client.StatusEvent
	decodeErr  error
}

// readStatusStream reads every message the status stream stores, with its
// headers, in stream order.
func (e *env) readStatusStream() []statusMsg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, e.topo.StatusStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info := st.CachedInfo()
	var out []statusMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatalf("read %s seq %d: %v", e.topo.StatusStream, seq, err)
		}
		sm := statusMsg{seq: m.Sequence, subject: m.Subject, key: m.Header.Get(client.HeaderKey), msgID: m.Header.Get(client.HeaderMsgID)}
		sm.decodeErr = json.Unmarshal(m.Data, &sm.ev)
		out = append(out, sm)
	}
	if uint64(len(out)) != info.State.Msgs {
		e.t.Fatalf("read %d status events of %d stored", len(out), info.State.Msgs)
	}
	return out
}

// trackerLeader returns the worker id and holder (id/nonce) in the tracker's
// lease, or "" when no lease is held.
func (e *env) trackerLeader() (worker, holder string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	kv, err := e.js.KeyValue(ctx, e.topo.ControlBucket)
	if err != nil {
		return "", ""
	}
	kve, err := kv.Get(ctx, tracker.LeaseKey)
	if err != nil {
		return "", ""
	}
	var v struct {
		Holder string `json:"holder"`
		Worker string `json:"worker"`
	}
	if json.Unmarshal(kve.Value(), &v) != nil {
		return "", ""
	}
	return v.Worker, v.Holder
}

// killWhilePublishing SIGKILLs w as soon as the tracker publishes a batch
// row's event (seen on a plain subscription, as the stream stores it), or
// any event if none comes within timeout: the leader is then in the middle
// of a batch, its row events out and its runs entry not yet written, the
// case the de-duplication guards exist for. It reports whether a row event
// triggered the kill.
func (e *env) killWhilePublishing(w *workerProc, timeout time.Duration) bool {
	e.t.Helper()
	fired := make(chan bool, 2)
	var once sync.Once
	kill := func(onRow bool) {
		once.Do(func() {
			_ = w.cmd.Process.Signal(syscall.SIGKILL)
			fired <- onRow
		})
	}
	rows, err := e.nc.Subscribe(e.topo.StatusPrefix+".*.run.*", func(*nats.Msg) { kill(true) })
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = rows.Unsubscribe() }()
	var onRow bool
	select {
	case onRow = <-fired:
	case <-time.After(timeout):
		any, err := e.nc.Subscribe(e.topo.StatusPrefix+".>", func(*nats.Msg) { kill(false) })
		if err != nil {
			e.t.Fatal(err)
		}
		defer func() { _ = any.Unsubscribe() }()
		select {
		case onRow = <-fired:
		case <-time.After(timeout):
			kill(false) // no event at all: kill anyway
			onRow = <-fired
		}
	}
	w.kill() // waits for the exit
	return onRow
}

// groupCounts counts the sandbox's run groups by status.
func groupCounts(groups []sandbox.RunGroup) (running, terminal int) {
	for _, g := range groups {
		switch {
		case g.Status == sandbox.StatusRunning:
			running++
		case g.Status == sandbox.StatusSucceeded || g.Status == sandbox.StatusFailed || g.Status == sandbox.StatusTerminated:
			terminal++
		}
	}
	return running, terminal
}

// enqueueLine is one per-request line of enqueue's standard output.
type enqueueLine struct {
	loc, key, what, rest string
}

func parseEnqueueOutput(out []byte) []enqueueLine {
	var lines []enqueueLine
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) < 3 {
			continue
		}
		l := enqueueLine{loc: f[0], key: f[1], what: f[2]}
		if len(f) == 4 {
			l.rest = f[3]
		}
		lines = append(lines, l)
	}
	return lines
}

func apiTimeOf(s string) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339, s)
	return t, err == nil
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// Issue 13's acceptance test, black box: 1,000 requests (singletons and
// table batches of 2-5 rows) published by the real cmd/enqueue with
// --wait=completed from a CSV sample sheet, three real worker processes with
// the tracker on at the deployed rate (sandbox and fleet at 20 calls/s per
// action, the tracker's default 25% share, 5 s interval, 10 s lease), runs of
// 10-60 s with 10% of runs failing with one of four messages. When a good
// share of the groups run and some have ended, the tracker's leader (read
// from the lease in OMICSQ_CONTROL) is SIGKILLed as it publishes a batch
// row's event, and restarted once another replica took over. Judged from the sandbox's registry and every message
// stored in the status stream: one run group per key; exactly one terminal
// group event per key, last on its subject, with the sandbox's final status
// and error message; for each batch row one terminal run event with the
// row's status and message, before the group's terminal event; no (key, run,
// status) stored twice; and enqueue exits 1 naming exactly the failed
// requests, with their messages.
func TestRunLifecycleAcceptance(t *testing.T) {
	n := lifecycleRequests(t)
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{
		Rate: sandbox.DefaultRate, Seed: 13,
		Execution: sandbox.Execution{Enabled: true, QueueDelay: time.Second, DurationMin: 10 * time.Second,
			DurationMax: 60 * time.Second, FailureRate: 0.10, FailureMessages: lifecycleMessages},
	}})
	reqs := lifecycleWorkload(n)
	wl := newWorkload()
	batches, rows := 0, 0
	for _, r := range reqs {
		wl.valid[r.key] = r.name
		wl.order = append(wl.order, r.key)
		if r.table != "" {
			batches++
			rows += len(r.rows)
		}
	}
	sheet := writeSheet(t, reqs)

	var ws []*workerProc
	for i := 1; i <= 3; i++ {
		ws = append(ws, e.startWorker(fmt.Sprintf("w%d", i), "--rate", "20", "--tracker-projects", projID))
	}

	// enqueue as a user runs it; the --timeout covers submission (about
	// n/20 s) and the longest run. Its output goes to files, which the
	// test can read while it runs.
	outPath, errPath := filepath.Join(t.TempDir(), "enqueue.out"), filepath.Join(t.TempDir(), "enqueue.err")
	outF, err1 := os.Create(outPath)
	errF, err2 := os.Create(errPath)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	enq := exec.Command(enqueueBin, "--nats-url", e.clientURLs(), "--wait=completed", "--timeout", "4m", sheet)
	enq.Stdout, enq.Stderr = outF, errF
	enqStart := time.Now()
	if err := enq.Start(); err != nil {
		t.Fatal(err)
	}
	outF.Close()
	errF.Close()
	enqDone := make(chan error, 1)
	go func() { enqDone <- enq.Wait() }()
	var (
		enqErr    error
		enqExited bool
	)
	t.Cleanup(func() {
		if !enqExited {
			_ = enq.Process.Kill()
			<-enqDone
		}
	})

	// Kill the leader mid-run, once a quarter of the groups run and 5%
	// ended, and restart it when another replica leads.
	var (
		killed                       *workerProc
		killedHolder                 string
		killAt, takeoverAt           time.Time
		runningAtKill, terminalAtKil int
		eventsAtKill                 uint64
		onRowEvent                   bool
		newLeader                    string
	)
	deadline := time.Now().Add(5 * time.Minute)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for !enqExited {
		select {
		case enqErr = <-enqDone:
			enqExited = true
			continue
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(errPath)
			t.Fatalf("enqueue did not exit within 5m\nstderr:\n%s", tailBytes(b, 20))
		}
		switch {
		case killed == nil:
			running, terminal := groupCounts(e.sb.RunGroups())
			if running < n/4 || terminal < n/20 {
				continue
			}
			id, holder := e.trackerLeader()
			i := slices.IndexFunc(ws, func(w *workerProc) bool { return w.id == id })
			if i < 0 {
				continue
			}
			killed, killedHolder, runningAtKill, terminalAtKil = ws[i], holder, running, terminal
			onRowEvent = e.killWhilePublishing(killed, 15*time.Second)
			killAt = time.Now()
			e.kills++
			if si, err := e.js.Stream(context.Background(), e.topo.StatusStream); err == nil {
				eventsAtKill = si.CachedInfo().State.Msgs
			}
			t.Logf("SIGKILLed tracker leader %s at %v (on a row event: %v): %d groups running, %d terminal, %d events stored",
				id, killAt.Sub(e.start).Round(100*time.Millisecond), onRowEvent, running, terminal, eventsAtKill)
		case takeoverAt.IsZero():
			id, holder := e.trackerLeader()
			if holder == "" || holder == killedHolder {
				continue
			}
			takeoverAt, newLeader = time.Now(), id
			t.Logf("%s took the tracker over %v after the kill; restarting %s", id, takeoverAt.Sub(killAt).Round(10*time.Millisecond), killed.id)
			if err := killed.restart(); err != nil {
				t.Fatalf("restart %s: %v", killed.id, err)
			}
		}
	}
	enqDuration := time.Since(enqStart)
	stdout, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.ReadFile(errPath)
	if err != nil {
		t.Fatal(err)
	}
	if killed == nil {
		t.Fatalf("enqueue exited (%v) before the tracker's leader could be killed mid-run", enqErr)
	}
	if takeoverAt.IsZero() {
		t.Errorf("no replica took the tracker over before enqueue exited")
	}
	code := 0
	if ee, ok := errors.AsType[*exec.ExitError](enqErr); ok {
		code = ee.ExitCode()
	} else if enqErr != nil {
		t.Fatalf("enqueue: %v", enqErr)
	}

	e.stopWorkers()
	final, err := e.snapshot()
	if err != nil {
		t.Fatalf("final snapshot: %v", err)
	}
	f := e.verify(wl, final)

	// The sandbox's registry: each key's group, its final status and
	// message, and its runs.
	byName := map[string]sandbox.RunGroup{}
	for _, g := range e.sb.RunGroups() {
		byName[g.Name] = g
	}
	group := map[string]sandbox.RunGroup{}
	runsOf := map[string][]sandbox.Run{}
	failed, succeeded := map[string]bool{}, map[string]bool{}
	var lastEnd time.Time
	lastEndKey := ""
	for _, r := range reqs {
		g, ok := byName[r.name]
		if !ok {
			continue // verify reported it
		}
		group[r.key] = g
		runsOf[r.key] = e.sb.Runs(g.RunGroupId)
		switch g.Status {
		case sandbox.StatusFailed:
			failed[r.key] = true
		case sandbox.StatusSucceeded:
			succeeded[r.key] = true
		default:
			t.Errorf("%s: the sandbox's group %s is %s at the end, not terminal", r.key, g.RunGroupId, g.Status)
		}
		if got := len(runsOf[r.key]); got != max(1, len(r.rows)) {
			t.Errorf("%s: the sandbox's group has %d runs for %d rows", r.key, got, len(r.rows))
		}
		if end, ok := apiTimeOf(g.ExecutionTime.EndTime); ok && end.After(lastEnd) {
			lastEnd, lastEndKey = end, r.key
		}
	}

	// Every message the status stream stores.
	msgs := e.readStatusStream()
	var errs []string
	fail := func(format string, a ...any) {
		if len(errs) < 30 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	stored := map[string]int{} // (key, run group, run, status) -> messages stored
	groupEvents := map[string][]statusMsg{}
	runEvents := map[string]map[string][]statusMsg{} // key -> RunUuid -> events
	for _, m := range msgs {
		ev := m.ev
		if m.decodeErr != nil {
			fail("status event seq %d does not decode: %v", m.seq, m.decodeErr)
			continue
		}
		if _, ok := wl.valid[ev.Key]; !ok {
			fail("status event seq %d for unknown key %q", m.seq, ev.Key)
			continue
		}
		id := client.StatusMsgID(ev)
		stored[id]++
		if m.key != ev.Key || m.msgID != id {
			fail("status event seq %d: headers Omicsq-Key %q Nats-Msg-Id %q, want %q %q", m.seq, m.key, m.msgID, ev.Key, id)
		}
		if ev.Terminal != client.IsTerminalStatus(ev.Status) {
			fail("status event seq %d: status %s with terminal=%v", m.seq, ev.Status, ev.Terminal)
		}
		if ev.RunUUID == "" {
			if m.subject != e.topo.StatusGroupSubject(ev.Key) {
				fail("group event seq %d of %s on subject %s", m.seq, ev.Key, m.subject)
			}
			groupEvents[ev.Key] = append(groupEvents[ev.Key], m)
			continue
		}
		if m.subject != e.topo.StatusRunSubject(ev.Key, ev.RunUUID) {
			fail("run event seq %d of %s on subject %s", m.seq, ev.Key, m.subject)
		}
		if runEvents[ev.Key] == nil {
			runEvents[ev.Key] = map[string][]statusMsg{}
		}
		runEvents[ev.Key][ev.RunUUID] = append(runEvents[ev.Key][ev.RunUUID], m)
	}
	dups := 0
	for id, c := range stored {
		if c > 1 {
			dups += c - 1
			fail("event %s stored %d times", id, c)
		}
	}

	// A group's end is seen within a fail-over (two lease TTLs of 10 s)
	// plus two poll cycles (5 s each) of the new leader, and some slack
	// for a loaded machine; enqueue's own timeout is far longer.
	const maxLag = 40 * time.Second
	var lags []time.Duration
	groupTerminals, runTerminals := 0, 0
	var lastTerminal time.Time
	var lastEndLag time.Duration
	for _, r := range reqs {
		g, ok := group[r.key]
		if !ok {
			continue
		}
		evs := groupEvents[r.key]
		var term []statusMsg
		for _, m := range evs {
			if m.ev.RunGroupID != g.RunGroupId {
				fail("%s: group event seq %d names run group %s, the sandbox's is %s", r.key, m.seq, m.ev.RunGroupID, g.RunGroupId)
			}
			if m.ev.Terminal {
				term = append(term, m)
			}
		}
		if len(term) != 1 {
			fail("%s: %d terminal group events, want exactly 1 (%d group events)", r.key, len(term), len(evs))
			continue
		}
		groupTerminals++
		tm := term[0]
		if evs[len(evs)-1].seq != tm.seq {
			fail("%s: a group event follows the terminal one (seq %d after %d)", r.key, evs[len(evs)-1].seq, tm.seq)
		}
		if tm.ev.Status != g.Status {
			fail("%s: terminal group event says %s, the sandbox's group %s is %s", r.key, tm.ev.Status, g.RunGroupId, g.Status)
		}
		if tm.ev.ErrorMessage != g.ErrorMessage {
			fail("%s: terminal group event's error message %q, the sandbox's is %q", r.key, tm.ev.ErrorMessage, g.ErrorMessage)
		}
		if failed[r.key] && !slices.Contains(lifecycleMessages, tm.ev.ErrorMessage) {
			fail("%s: failed with %q, none of the sandbox's failure messages", r.key, tm.ev.ErrorMessage)
		}
		if end, ok := apiTimeOf(g.ExecutionTime.EndTime); ok {
			// The API's times have whole seconds: the lag is up to 1 s
			// longer than it was.
			lag := tm.ev.ObservedAt.Sub(end)
			lags = append(lags, lag)
			if lag > maxLag {
				fail("%s: its terminal event came %v after the group ended (more than %v)", r.key, lag.Round(100*time.Millisecond), maxLag)
			}
			if r.key == lastEndKey {
				lastEndLag = tm.ev.ObservedAt.Sub(end)
			}
		}
		lastTerminal = later(lastTerminal, tm.ev.ObservedAt)

		runs := runEvents[r.key]
		if r.table == "" {
			if len(runs) > 0 {
				fail("%s: a singleton has run events for %d runs", r.key, len(runs))
			}
			continue
		}
		for _, run := range runsOf[r.key] {
			revs := runs[run.RunUuid]
			delete(runs, run.RunUuid) // what is left names no run of the group
			var rterm []statusMsg
			for _, m := range revs {
				if m.ev.TableRowUUID != run.TableRowUuid || m.ev.RunGroupID != g.RunGroupId {
					fail("%s: run event seq %d names row %s of %s, the sandbox's run is row %s of %s", r.key, m.seq,
						m.ev.TableRowUUID, m.ev.RunGroupID, run.TableRowUuid, g.RunGroupId)
				}
				if m.ev.Terminal {
					rterm = append(rterm, m)
				}
			}
			if len(rterm) != 1 {
				fail("%s: row %s has %d terminal run events, want exactly 1 (%d run events)", r.key, run.TableRowUuid, len(rterm), len(revs))
				continue
			}
			runTerminals++
			rt := rterm[0]
			if rt.ev.Status != run.Status || rt.ev.ErrorMessage != run.ErrorMessage {
				fail("%s: row %s ended %s %q by its event, %s %q in the sandbox", r.key, run.TableRowUuid, rt.ev.Status,
					rt.ev.ErrorMessage, run.Status, run.ErrorMessage)
			}
			if revs[len(revs)-1].seq > tm.seq {
				fail("%s: row %s has an event (seq %d) after the group's terminal one (seq %d)", r.key, run.TableRowUuid, revs[len(revs)-1].seq, tm.seq)
			}
		}
		for uuid := range runs {
			fail("%s: run events for run %s, which the sandbox's group does not have", r.key, uuid)
		}
	}

	// enqueue: exit status 1, one end line per request, the failed ones
	// named with the sandbox's message and their sheet row, no other.
	if code != 1 {
		fail("enqueue exited %d, want 1 (%d runs failed)", code, len(failed))
	}
	ended := map[string]int{}
	named := map[string]bool{}
	rowOf := map[string]int{}
	for _, r := range reqs {
		rowOf[r.key] = r.row
	}
	for _, l := range parseEnqueueOutput(stdout) {
		switch l.what {
		case "run-failed":
			ended[l.key]++
			named[l.key] = true
			g := group[l.key]
			want := g.RunGroupId + " " + g.Status + ": " + g.ErrorMessage
			if !failed[l.key] {
				fail("enqueue named %s failed (%s); the sandbox's group is %s", l.key, l.rest, g.Status)
			} else if l.rest != want {
				fail("enqueue: %s run-failed %q, want %q", l.key, l.rest, want)
			}
			if !strings.HasSuffix(l.loc, fmt.Sprintf(":row%d", rowOf[l.key])) {
				fail("enqueue: %s named at %s, its row is %d", l.key, l.loc, rowOf[l.key])
			}
		case "run-succeeded":
			ended[l.key]++
			if !succeeded[l.key] {
				fail("enqueue says %s succeeded; the sandbox's group is %s", l.key, group[l.key].Status)
			}
		case "dead-letter", "pending", "result-unreadable":
			fail("enqueue: %s %s %s", l.key, l.what, l.rest)
		}
	}
	for _, r := range reqs {
		if ended[r.key] != 1 {
			fail("enqueue printed %d end lines for %s, want 1", ended[r.key], r.key)
		}
		if failed[r.key] && !named[r.key] {
			fail("enqueue did not name failed request %s", r.key)
		}
	}
	wantSummary := fmt.Sprintf("enqueue: runs: 0 submitted, 0 running, %d succeeded, %d failed", len(succeeded), len(failed))
	if !strings.Contains(string(stderr), wantSummary+"\n") {
		fail("enqueue's standard error lacks %q:\n%s", wantSummary, tailBytes(stderr, 5))
	}
	sort.Strings(errs)
	for _, s := range errs {
		t.Error(s)
	}

	st := e.sb.Stats()
	drain := lastTerminal.Sub(lastEnd)
	f.Extra = []string{
		fmt.Sprintf("batches=%d batch_rows=%d singletons=%d", batches, rows, n-batches),
		fmt.Sprintf("failed=%d succeeded=%d", len(failed), len(succeeded)),
		fmt.Sprintf("status_events=%d terminal_group_events=%d terminal_run_events=%d duplicate_events=%d", len(msgs), groupTerminals, runTerminals, dups),
		fmt.Sprintf("kill_at=%s kill_on_row_event=%v running_at_kill=%d terminal_at_kill=%d events_at_kill=%d killed=%s takeover=%s new_leader=%s",
			killAt.Sub(e.start).Round(100*time.Millisecond), onRowEvent, runningAtKill, terminalAtKil, eventsAtKill, killed.id,
			takeoverAt.Sub(killAt).Round(10*time.Millisecond), newLeader),
		fmt.Sprintf("lag{p50=%s p95=%s max=%s last_run=%s} last_run_end_to_last_terminal=%s",
			percentile(lags, 0.5).Round(100*time.Millisecond), percentile(lags, 0.95).Round(100*time.Millisecond),
			percentile(lags, 1).Round(100*time.Millisecond), lastEndLag.Round(100*time.Millisecond), drain.Round(100*time.Millisecond)),
		fmt.Sprintf("DescribeRuns=%d throttled{RunApplication=%d DescribeRunGroups=%d DescribeRuns=%d}",
			st.Actions["DescribeRuns"].Arrivals, st.Actions["RunApplication"].Throttled,
			st.Actions["DescribeRunGroups"].Throttled, st.Actions["DescribeRuns"].Throttled),
		fmt.Sprintf("enqueue_exit=%d enqueue_duration=%s", code, enqDuration.Round(100*time.Millisecond)),
	}
	e.report(f)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func tailBytes(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
