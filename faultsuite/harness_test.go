package faultsuite

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"net"
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

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// env is one scenario's world: NATS JetStream (one embedded server or a
// three-node cluster, all on loopback), the sandbox Omics API over real
// HTTP, and the worker processes.
type env struct {
	t     *testing.T
	name  string
	start time.Time

	mu    sync.Mutex
	nodes []*natsNode // index = node number; a stopped node keeps its slot

	nc   *nats.Conn
	js   jetstream.JetStream
	topo queue.Topology

	sb   *sandbox.Server
	sbLn *sandbox.Listener

	logDir  string
	workers []*workerProc
	kills   int
}

// natsNode is one embedded nats-server; opts keep its port and store so it
// can be started again in place.
type natsNode struct {
	opts server.Options
	ns   *server.Server
}

// envOptions configures newEnv.
type envOptions struct {
	Sandbox sandbox.Options
	// Cluster starts three routed JetStream servers instead of one.
	Cluster bool
	// Topology adjusts queue.DefaultTopology (AckWait, MaxDeliver,
	// Replicas); the workers get the same values as flags.
	Topology func(*queue.Topology)
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, name: t.Name(), start: time.Now(), topo: queue.DefaultTopology(), logDir: t.TempDir()}
	e.topo.AckWait = 10 * time.Second
	if o.Topology != nil {
		o.Topology(&e.topo)
	}
	t.Cleanup(e.cleanup)
	if o.Cluster {
		e.startCluster(3)
	} else {
		e.nodes = []*natsNode{{opts: server.Options{
			ServerName: "fs-single", Host: "127.0.0.1", StoreDir: filepath.Join(t.TempDir(), "js"),
		}}}
		e.startNode(0)
	}
	nc, err := nats.Connect(e.clientURLs(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond),
		nats.RetryOnFailedConnect(false), nats.Name("faultsuite "+e.name))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	e.nc = nc
	e.js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e.provision()

	so := o.Sandbox
	if so.SecretID == "" {
		so.SecretID, so.SecretKey = sandbox.DefaultSecretID, sandbox.DefaultSecretKey
	}
	if so.Seed == 0 {
		so.Seed = 1
	}
	sb, err := sandbox.New(so)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	e.sb, e.sbLn = sb, ln
	return e
}

func (e *env) cleanup() {
	for _, w := range e.workers {
		w.kill()
	}
	if e.t.Failed() {
		for _, w := range e.workers {
			e.t.Logf("last log lines of worker %s (%s):\n%s", w.id, w.logPath, tail(w.logPath, 25))
		}
	}
	if e.sb != nil {
		e.sb.Close() // releases calls held by latency and hang faults
		_ = e.sbLn.Close()
	}
	if e.nc != nil {
		e.nc.Close()
	}
	e.mu.Lock()
	nodes := e.nodes
	e.mu.Unlock()
	for _, n := range nodes {
		if n.ns != nil {
			n.ns.Shutdown()
			n.ns.WaitForShutdown()
		}
	}
}

// provision creates the topology the workers will also provision with the
// same settings; a cluster may still be electing leaders, so retry.
func (e *env) provision() {
	e.t.Helper()
	var err error
	for i := 0; i < 60; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = queue.Provision(ctx, e.js, e.topo)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.t.Fatalf("provision: %v", err)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNode starts node i with its remembered options (same port, same
// store): a fresh start or a restart in place.
func (e *env) startNode(i int) {
	e.t.Helper()
	if err := e.tryStartNode(i); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) tryStartNode(i int) error {
	e.mu.Lock()
	n := e.nodes[i]
	e.mu.Unlock()
	o := n.opts
	o.JetStream, o.NoLog, o.NoSigs = true, true, true
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT // first start; a restart reuses the port
	}
	var ns *server.Server
	var err error
	// The port of a server just shut down may take a moment to be free.
	for attempt := 0; attempt < 10; attempt++ {
		ns, err = server.NewServer(&o)
		if err == nil {
			go ns.Start()
			if ns.ReadyForConnections(5 * time.Second) {
				break
			}
			ns.Shutdown()
			err = errors.New("not ready for connections")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("nats node %d: %w", i, err)
	}
	e.mu.Lock()
	n.ns = ns
	n.opts.Port = ns.Addr().(*net.TCPAddr).Port
	e.mu.Unlock()
	return nil
}

// stopNode shuts node i down (a clean shutdown of the process: the store
// stays on disk).
func (e *env) stopNode(i int) {
	e.mu.Lock()
	ns := e.nodes[i].ns
	e.nodes[i].ns = nil
	e.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

func (e *env) clientURLs() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var urls []string
	for _, n := range e.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port))
	}
	return strings.Join(urls, ",")
}

// startCluster starts n routed JetStream servers on loopback and waits for
// the JetStream meta leader.
func (e *env) startCluster(n int) {
	e.t.Helper()
	cports := make([]int, n)
	var routes []string
	for i := range cports {
		cports[i] = freePort(e.t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", cports[i]))
	}
	for i := 0; i < n; i++ {
		e.nodes = append(e.nodes, &natsNode{opts: server.Options{
			ServerName: fmt.Sprintf("fs-n%d", i+1), Host: "127.0.0.1",
			StoreDir: filepath.Join(e.t.TempDir(), fmt.Sprintf("n%d", i+1)),
			Cluster:  server.ClusterOpts{Name: "omicsq-faultsuite", Host: "127.0.0.1", Port: cports[i]},
			Routes:   server.RoutesFromStr(strings.Join(routes, ",")),
		}})
	}
	// Servers of a cluster wait for each other: start them concurrently.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = e.tryStartNode(i) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader := -1
		routed := true
		for i, nd := range e.nodes {
			if nd.ns.JetStreamIsLeader() {
				leader = i
			}
			if nd.ns.NumRoutes() < n-1 {
				routed = false
			}
		}
		if leader >= 0 && routed {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("cluster: no JetStream meta leader within 30s (routed=%v)", routed)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metaLeader returns the node currently leading the JetStream meta group,
// or -1.
func (e *env) metaLeader() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, n := range e.nodes {
		if n.ns != nil && n.ns.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// --- worker processes ---

// workerProc is one cmd/worker process.
type workerProc struct {
	id      string
	args    []string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // valid after done
	exited  time.Time
}

// workerArgs are the flags every scenario's workers run with; extra flags
// come after them and win.
func (e *env) workerArgs(id string, extra []string) []string {
	args := []string{
		"--nats-url", e.clientURLs(), "--endpoint", e.sbLn.Addr(), "--insecure-http",
		"--metrics-addr=", "--worker-id", id, "--log-format", "json", "--log-level", "info",
		"--api-timeout", "2s", "--rate", "0", "--concurrency", "16",
		"--retry-initial", "50ms", "--retry-max-interval", "500ms", "--max-attempts", "30",
		"--pause-probe-interval", "200ms", "--drain-timeout", "5s", "--lease-ttl", "3s", "--lookup-horizon", "60s",
		"--ack-wait", e.topo.AckWait.String(), "--max-deliver", strconv.Itoa(e.topo.MaxDeliver),
		"--stream-replicas", strconv.Itoa(e.topo.Replicas),
	}
	return append(args, extra...)
}

// startWorker starts a worker process; it logs to a file under the test's
// temporary directory (appended to across restarts).
func (e *env) startWorker(id string, extra ...string) *workerProc {
	e.t.Helper()
	w := &workerProc{id: id, args: e.workerArgs(id, extra), logPath: filepath.Join(e.logDir, id+".log")}
	if err := w.start(); err != nil {
		e.t.Fatalf("start worker %s: %v", id, err)
	}
	e.mu.Lock()
	e.workers = append(e.workers, w)
	e.mu.Unlock()
	return w
}

func (w *workerProc) start() error {
	f, err := os.OpenFile(w.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(workerBin, w.args...)
	cmd.Env = append(os.Environ(),
		"TENCENTCLOUD_SECRET_ID="+sandbox.DefaultSecretID, "TENCENTCLOUD_SECRET_KEY="+sandbox.DefaultSecretKey)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	w.cmd, w.done, w.err = cmd, make(chan struct{}), nil
	done := w.done
	go func() {
		err := cmd.Wait()
		f.Close()
		w.err, w.exited = err, time.Now()
		close(done)
	}()
	return nil
}

// restart starts the same worker again (same id and flags), as a container
// restart in the same pod would.
func (w *workerProc) restart() error {
	<-w.done
	return w.start()
}

func (w *workerProc) running() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (w *workerProc) kill() {
	if w.cmd == nil {
		return
	}
	if w.running() {
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-w.done
}

// terminate sends SIGTERM and waits up to timeout for the exit; it returns
// how long the exit took and the process's error (nil: exit status 0).
func (w *workerProc) terminate(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
		return w.exited.Sub(start), w.err
	case <-time.After(timeout):
		w.kill()
		return time.Since(start), fmt.Errorf("worker %s did not exit within %v of SIGTERM", w.id, timeout)
	}
}

// stopWorkers terminates every running worker gracefully, all at once.
func (e *env) stopWorkers() {
	e.t.Helper()
	errc := make(chan error, len(e.workers))
	for _, w := range e.workers {
		go func() {
			if !w.running() {
				errc <- nil
				return
			}
			if _, err := w.terminate(30 * time.Second); err != nil {
				errc <- fmt.Errorf("worker %s: %w", w.id, err)
				return
			}
			errc <- nil
		}()
	}
	for range e.workers {
		if err := <-errc; err != nil {
			e.t.Errorf("stopping a worker: %v", err)
		}
	}
}

// logLines returns the JSON log records whose msg is msg, of the given
// workers (none: every worker).
func (e *env) logLines(msg string, of ...*workerProc) []map[string]any {
	var out []map[string]any
	seen := map[string]bool{}
	if len(of) == 0 {
		of = e.workers
	}
	for _, w := range of {
		if seen[w.logPath] {
			continue
		}
		seen[w.logPath] = true
		f, err := os.Open(w.logPath)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == msg {
				out = append(out, rec)
			}
		}
		f.Close()
	}
	return out
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// --- requests ---

const (
	appID   = "app-sweet-cerulean-frog-569111"
	projID  = "prj-peaceful-pink-bird-631828"
	envID   = "env-05d0g0w2"
	otherID = "app-missing-grey-owl-000001"
)

// requestBody is a valid RunApplication body for a sample named name.
func requestBody(name, application string) []byte {
	input := base64.StdEncoding.EncodeToString([]byte(`{"wf.sample":"` + name + `"}`))
	b, _ := json.Marshal(map[string]any{
		"ApplicationId": application, "ProjectId": projID,
		"Name": name, "EnvironmentId": envID, "InputBase64": input,
		"Option": map[string]any{"FailureMode": "NoNewCalls", "UseCallCache": true},
	})
	return b
}

// invalidBodies are requests the worker must reject locally (no API call).
var invalidBodies = []string{
	`this is not json`,
	`{"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K"}`,
	`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"%%%"}`,
	`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","Priority":1}`,
	`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","Option":{"FailureMode":"Sometimes"}}`,
}

// workload is what a scenario published and what it expects.
type workload struct {
	valid   map[string]string // key -> run group Name
	invalid map[string]bool   // keys that must end as one invalid_request dead letter
	order   []string          // keys in publish order
}

func newWorkload() *workload {
	return &workload{valid: map[string]string{}, invalid: map[string]bool{}}
}

func (w *workload) size() int { return len(w.valid) + len(w.invalid) }

// publishWorkload publishes nValid valid requests and nInvalid invalid ones
// (spread evenly among them) and returns the workload.
func (e *env) publishWorkload(prefix string, nValid, nInvalid int) *workload {
	e.t.Helper()
	wl := newWorkload()
	every := 0
	if nInvalid > 0 {
		every = max(1, nValid/nInvalid)
	}
	inv := 0
	for i := 0; i < nValid; i++ {
		key := fmt.Sprintf("%s-%05d", prefix, i)
		name := fmt.Sprintf("%s-sample-%05d", prefix, i)
		wl.valid[key] = name
		wl.order = append(wl.order, key)
		if every > 0 && i%every == every/2 && inv < nInvalid {
			ik := fmt.Sprintf("%s-invalid-%03d", prefix, inv)
			wl.invalid[ik] = true
			wl.order = append(wl.order, ik)
			inv++
		}
	}
	for ; inv < nInvalid; inv++ {
		ik := fmt.Sprintf("%s-invalid-%03d", prefix, inv)
		wl.invalid[ik] = true
		wl.order = append(wl.order, ik)
	}
	invIdx := 0
	bodies := make(map[string][]byte, len(wl.order))
	for _, k := range wl.order {
		if name, ok := wl.valid[k]; ok {
			bodies[k] = requestBody(name, appID)
		} else {
			bodies[k] = []byte(invalidBodies[invIdx%len(invalidBodies)])
			invIdx++
		}
	}
	e.publishBodies(wl.order, bodies)
	return wl
}

// publishBodies publishes each key's body as a request (Omicsq-Key and
// Nats-Msg-Id = key, as enqueue does), asynchronously in windows.
func (e *env) publishBodies(keys []string, bodies map[string][]byte) {
	e.t.Helper()
	const window = 256
	for i := 0; i < len(keys); i += window {
		var futs []jetstream.PubAckFuture
		for _, k := range keys[i:min(i+window, len(keys))] {
			m := nats.NewMsg(e.topo.RequestsSubject)
			m.Data = bodies[k]
			m.Header.Set(client.HeaderKey, k)
			m.Header.Set(client.HeaderMsgID, k)
			f, err := e.js.PublishMsgAsync(m)
			if err != nil {
				e.t.Fatalf("publish %s: %v", k, err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				e.t.Fatalf("publish: %v", err)
			case <-time.After(30 * time.Second):
				e.t.Fatal("publish: no ack within 30s")
			}
		}
	}
}

// --- observing the streams ---

// state is a snapshot of the streams and the worker consumer.
type state struct {
	requests, results, dlq uint64 // messages stored now
	requestsLastSeq        uint64
	numPending, ackPending uint64
	delivered              uint64 // consumer delivery sequence: deliveries, redeliveries included
}

func (e *env) snapshot() (state, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var s state
	for _, x := range []struct {
		name string
		msgs *uint64
	}{{e.topo.RequestsStream, &s.requests}, {e.topo.ResultsStream, &s.results}, {e.topo.DLQStream, &s.dlq}} {
		st, err := e.js.Stream(ctx, x.name)
		if err != nil {
			return s, err
		}
		info := st.CachedInfo()
		*x.msgs = info.State.Msgs
		if x.name == e.topo.RequestsStream {
			s.requestsLastSeq = info.State.LastSeq
		}
	}
	c, err := e.js.Consumer(ctx, e.topo.RequestsStream, e.topo.Consumer)
	if err != nil {
		return s, err
	}
	ci := c.CachedInfo()
	s.numPending, s.ackPending, s.delivered = ci.NumPending, uint64(ci.NumAckPending), ci.Delivered.Consumer
	return s, nil
}

// waitSettled waits until at least n requests ended (results + dead
// letters), the requests stream is empty and the consumer has nothing
// pending or unacknowledged. It fails the test at the deadline.
func (e *env) waitSettled(n int, timeout time.Duration) state {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last state
	var lastErr error
	for {
		s, err := e.snapshot()
		if err == nil {
			last = s
			if int(s.results+s.dlq) >= n && s.requests == 0 && s.numPending == 0 && s.ackPending == 0 {
				return s
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			e.t.Fatalf("not settled within %v: %d of %d requests ended; requests stream %d, pending %d, ack pending %d (last error: %v)",
				timeout, last.results+last.dlq, n, last.requests, last.numPending, last.ackPending, lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or timeout passes (then fails).
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// outcomes reads every result and dead letter stored.
func (e *env) outcomes() (results map[string][]client.Result, dead map[string][]client.DeadLetter) {
	e.t.Helper()
	results, dead = map[string][]client.Result{}, map[string][]client.DeadLetter{}
	e.readStream(e.topo.ResultsStream, func() { results = map[string][]client.Result{} }, func(_ uint64, b []byte) {
		r, err := client.DecodeResult(b)
		if err != nil {
			e.t.Fatalf("bad result: %v", err)
		}
		results[r.Key] = append(results[r.Key], r)
	})
	e.readStream(e.topo.DLQStream, func() { dead = map[string][]client.DeadLetter{} }, func(_ uint64, b []byte) {
		d, err := client.DecodeDeadLetter(b)
		if err != nil {
			e.t.Fatalf("bad dead letter: %v", err)
		}
		dead[d.Key] = append(dead[d.Key], d)
	})
	return results, dead
}

// readStream calls each for every message stored in stream, in order. A
// cluster that just lost a node may still be moving leaders: a failed read
// starts again from the beginning (reset is called first).
func (e *env) readStream(stream string, reset func(), each func(seq uint64, data []byte)) {
	e.t.Helper()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Second)
		}
		reset()
		if err = e.tryReadStream(stream, each); err == nil {
			return
		}
	}
	e.t.Fatalf("read %s: %v", stream, err)
}

func (e *env) tryReadStream(stream string, each func(seq uint64, data []byte)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	info := st.CachedInfo()
	if info.State.Msgs == 0 {
		return nil
	}
	// Direct gets (the results and DLQ streams allow them) are answered by
	// any replica, so reading does not depend on placing a consumer.
	var got uint64
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted (a redriven dead letter)
		}
		if err != nil {
			return err
		}
		got++
		each(m.Sequence, m.Data)
	}
	if got != info.State.Msgs {
		return fmt.Errorf("read %d messages of %d", got, info.State.Msgs)
	}
	return nil
}

// --- judging ---

// figures are what a scenario measured; report prints them as one line.
type figures struct {
	Requests, Valid, Invalid   int
	RunGroups, Results, DLQ    int
	Duplicates, Lost, Pending  int
	Kills, Redeliveries        int
	Reconciled                 int
	RunCalls, DescribeCalls    int64
	DuplicateName, ClientGone  int64
	Latency, InternalErr, Thrt int64
	CommitFail                 map[sandbox.CommitFailMode]int64
	Duration                   time.Duration
	Extra                      []string
}

func (f figures) String() string {
	var modes []string
	for _, m := range sandbox.AllCommitFailModes {
		modes = append(modes, fmt.Sprintf("%s=%d", m, f.CommitFail[m]))
	}
	var ctf int64
	for _, n := range f.CommitFail {
		ctf += n
	}
	s := fmt.Sprintf("requests=%d (valid=%d invalid=%d) run_groups=%d results=%d dlq=%d duplicates=%d lost=%d pending=%d "+
		"faults{latency=%d internal_error=%d throttle=%d commit_then_fail=%d (%s)} kills=%d redeliveries=%d reconciled=%d "+
		"RunApplication=%d DescribeRunGroups=%d duplicate_name=%d answered_after_client_gone=%d duration=%s",
		f.Requests, f.Valid, f.Invalid, f.RunGroups, f.Results, f.DLQ, f.Duplicates, f.Lost, f.Pending,
		f.Latency, f.InternalErr, f.Thrt, ctf, strings.Join(modes, " "), f.Kills, f.Redeliveries, f.Reconciled,
		f.RunCalls, f.DescribeCalls, f.DuplicateName, f.ClientGone, f.Duration.Round(100*time.Millisecond))
	for _, x := range f.Extra {
		s += " " + x
	}
	return s
}

// allowedRunOutcomes are the sandbox outcomes a valid request's calls may
// have; anything else (a validation code) means an invalid request reached
// the API.
var allowedRunOutcomes = []string{"success", "throttled", "throttled_fault", "internal_error", "duplicate_name",
	"commit_then_fail_bad_gateway", "commit_then_fail_drop", "commit_then_fail_hang", "body_read_error", "RequestLimitExceeded"}

// verify asserts the exactly-once properties for wl after the run settled:
// every valid key is exactly one result naming the one run group with its
// Name, and no dead letter; every invalid key is exactly one invalid_request
// dead letter and no API call; no Name was created twice; no run group
// exists without its result; nothing is left in the requests stream or
// pending on the consumer. It returns the figures.
func (e *env) verify(wl *workload, final state) figures {
	e.t.Helper()
	results, dead := e.outcomes()
	groups := e.sb.RunGroups()
	st := e.sb.Stats()
	f := figures{
		Requests: wl.size(), Valid: len(wl.valid), Invalid: len(wl.invalid), RunGroups: len(groups),
		Kills: e.kills, Duration: time.Since(e.start),
		RunCalls: st.Actions["RunApplication"].Arrivals, DescribeCalls: st.Actions["DescribeRunGroups"].Arrivals,
		DuplicateName: st.DuplicateNameRejections, ClientGone: st.AnsweredAfterClientGone,
		Latency: st.FaultsInjected.Latency, InternalErr: st.FaultsInjected.InternalError, Thrt: st.FaultsInjected.Throttle,
		CommitFail: st.FaultsInjected.CommitThenFail,
	}
	for _, rs := range results {
		f.Results += len(rs)
	}
	for _, ds := range dead {
		f.DLQ += len(ds)
	}
	f.Redeliveries = int(final.delivered) - int(final.requestsLastSeq)

	byName := map[string][]string{}
	for _, g := range groups {
		byName[g.Name] = append(byName[g.Name], g.RunGroupId)
	}
	names := map[string]string{} // Name -> key
	for k, name := range wl.valid {
		names[name] = k
	}
	var errs []string
	fail := func(format string, a ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	for name, ids := range byName {
		if len(ids) > 1 {
			f.Duplicates += len(ids) - 1
			fail("Name %s created %d times: %v", name, len(ids), ids)
		}
		if _, ok := names[name]; !ok {
			fail("run group %v has Name %s, which no valid request has", ids, name)
		}
	}
	for k, name := range wl.valid {
		rs, ds := results[k], dead[k]
		switch {
		case len(rs) == 0 && len(ds) == 0:
			f.Lost++
			fail("valid request %s ended as nothing (lost)", k)
		case len(rs) > 1:
			f.Duplicates += len(rs) - 1
			fail("valid request %s has %d results", k, len(rs))
		}
		if len(ds) > 0 {
			fail("valid request %s was dead-lettered %d times (%s: %s %s)", k, len(ds), ds[0].Reason, ds[0].Error.Code, ds[0].Error.Message)
		}
		if len(rs) >= 1 {
			if rs[0].Reconciled {
				f.Reconciled++
			}
			ids := byName[name]
			if len(ids) == 0 {
				fail("request %s has result %s, but the sandbox has no run group named %s", k, rs[0].RunGroupID, name)
			} else if rs[0].RunGroupID != ids[0] {
				fail("request %s has result %s, but its Name belongs to run group %s", k, rs[0].RunGroupID, ids[0])
			}
		} else if len(byName[name]) > 0 {
			fail("run group %v (%s) exists without a result", byName[name], name)
		}
	}
	for k := range wl.invalid {
		ds := dead[k]
		if len(results[k]) > 0 {
			fail("invalid request %s has a result", k)
		}
		switch {
		case len(ds) == 0:
			f.Lost++
			fail("invalid request %s has no dead letter (lost)", k)
		case len(ds) > 1:
			f.Duplicates += len(ds) - 1
			fail("invalid request %s has %d dead letters", k, len(ds))
		case ds[0].Reason != "invalid_request" || ds[0].Attempts != 0:
			fail("invalid request %s: dead letter %s with %d attempts, want invalid_request with 0", k, ds[0].Reason, ds[0].Attempts)
		}
	}
	for k := range results {
		if _, ok := wl.valid[k]; !ok {
			fail("result for unknown key %s", k)
		}
	}
	for k := range dead {
		if _, ok := wl.valid[k]; !ok && !wl.invalid[k] {
			fail("dead letter for unknown key %s", k)
		}
	}
	if len(groups) != len(wl.valid) {
		fail("sandbox holds %d run groups for %d valid requests", len(groups), len(wl.valid))
	}
	for outcome, n := range st.Actions["RunApplication"].Calls {
		if !slices.Contains(allowedRunOutcomes, outcome) {
			fail("sandbox answered %d RunApplication calls with %s: an invalid request reached the API", n, outcome)
		}
	}
	// The sandbox watched every RunApplication call: never two open at once
	// for one Name (one request), whatever the faults and kills.
	if st.MaxConcurrentRunApplicationPerName > 1 {
		fail("%d RunApplication calls overlapped another open call for the same Name (max %d at once), e.g. %v",
			st.ConcurrentRunApplicationOverlaps, st.MaxConcurrentRunApplicationPerName, st.OverlappingNames)
	}
	f.Pending = int(final.requests + final.numPending + final.ackPending)
	if f.Pending != 0 {
		fail("left pending: requests stream %d, consumer num_pending %d, num_ack_pending %d", final.requests, final.numPending, final.ackPending)
	}
	sort.Strings(errs)
	for _, s := range errs {
		e.t.Error(s)
	}
	return f
}

// report logs the scenario's figures as one summary line.
func (e *env) report(f figures) {
	e.t.Helper()
	e.t.Logf("FIGURES %s: %s", e.name, f)
}

// finish stops the workers, checks that the state is still settled with
// nothing left, verifies wl and reports. It is the common end of a
// scenario.
func (e *env) finish(wl *workload, extra ...string) figures {
	e.t.Helper()
	e.stopWorkers()
	final, err := e.snapshot()
	if err != nil {
		e.t.Fatalf("final snapshot: %v", err)
	}
	f := e.verify(wl, final)
	f.Extra = extra
	e.report(f)
	return f
}
