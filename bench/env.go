package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// harness owns what lives across runs: the temporary directory, the worker
// binary built once, and every child process (killed on close, whatever
// happened).
type harness struct {
	root      string // module root
	tmp       string
	workerBin string
	progress  io.Writer
	keep      bool

	mu    sync.Mutex
	procs map[*proc]bool
}

func newHarness(ctx context.Context, progress io.Writer, workerBin string, keep bool) (*harness, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "omicsq-bench-")
	if err != nil {
		return nil, err
	}
	h := &harness{root: root, tmp: tmp, progress: progress, keep: keep, procs: make(map[*proc]bool)}
	if workerBin != "" {
		h.workerBin = workerBin
		return h, nil
	}
	h.workerBin = filepath.Join(tmp, "worker")
	h.logf("building cmd/worker into %s", h.workerBin)
	// -buildvcs=false: no git invocation (and no index refresh) in a tree
	// other people are working in.
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", h.workerBin, "./cmd/worker")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		h.close()
		return nil, fmt.Errorf("go build ./cmd/worker: %w\n%s", err, out)
	}
	return h, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmarks inside the omicsq module (go run ./bench ...)")
	}
	return filepath.Dir(gomod), nil
}

func (h *harness) logf(format string, a ...any) {
	fmt.Fprintf(h.progress, "[bench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// close kills every child still running and removes the temporary files.
func (h *harness) close() {
	h.mu.Lock()
	procs := make([]*proc, 0, len(h.procs))
	for p := range h.procs {
		procs = append(procs, p)
	}
	h.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	if h.keep {
		h.logf("kept %s", h.tmp)
		return
	}
	_ = os.RemoveAll(h.tmp)
}

// proc is a child process (a worker).
type proc struct {
	h      *harness
	name   string
	cmd    *exec.Cmd
	logf   string // its stdout+stderr
	exited chan struct{}
	err    error // after exited
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (h *harness) start(name, dir string, args, extraEnv []string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(h.workerBin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(workerBaseEnv(), extraEnv...)
	// If the harness dies without cleaning up (SIGKILL), the kernel kills
	// its workers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{h: h, name: name, cmd: cmd, logf: logPath, exited: make(chan struct{})}
	h.mu.Lock()
	h.procs[p] = true
	h.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		h.mu.Lock()
		delete(h.procs, p)
		h.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// workerBaseEnv is the harness's environment without any setting the worker
// reads, so that only the flags configure it.
func workerBaseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "OMICSQ_"), strings.HasPrefix(name, "NATS_"), strings.HasPrefix(name, "OMICS_"),
			strings.HasPrefix(name, "TENCENTCLOUD_"), strings.HasPrefix(name, "TKE_"),
			name == "METRICS_ADDR", name == "LOG_FORMAT", name == "LOG_LEVEL":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to grace, then SIGKILLs.
func (p *proc) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.h.logf("%s did not stop within %v; killing it", p.name, grace)
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// logTail returns the last lines of the process's output.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logf)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines counts the lines of the process's output containing s.
func (p *proc) logLines(s string) int {
	f, err := os.Open(p.logf)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// env is one run's world: a fresh JetStream server and a fresh sandbox, both
// in this process, and the worker processes pointed at them.
type env struct {
	h       *harness
	dir     string
	ns      *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	topo    queue.Topology
	sb      *sandbox.Server
	sl      apiListener
	rec     *recorder // nil unless recording
	tap     *tap      // nil unless tapping
	workers []*proc
}

// apiListener serves the sandbox: sandbox.Listen's listener, or the tap's.
type apiListener interface {
	Addr() string
	Close() error
}

type envOptions struct {
	// SandboxRate is the sandbox's limit in calls per sliding second; 0
	// lifts it.
	SandboxRate int
	// Record keeps the raw arrival log (see recorder).
	Record bool
	// Tap serves the sandbox behind a tap that records every call's
	// arrival time, action and Name (see tap); it implies Record, whose
	// records then carry the Name too.
	Tap bool
	// Sandbox adjusts the sandbox's options (faults, visibility, hang
	// timeout) after the harness set Rate, Seed and Logger.
	Sandbox func(*sandbox.Options)
	// Topology adjusts the topology the harness provisions (the workers
	// must be given the same values as flags).
	Topology func(*queue.Topology)
}

func (h *harness) newEnv(ctx context.Context, name string, o envOptions) (*env, error) {
	dir, err := os.MkdirTemp(h.tmp, name+"-")
	if err != nil {
		return nil, err
	}
	e := &env{h: h, dir: dir, topo: benchTopology()}
	if o.Topology != nil {
		o.Topology(&e.topo)
	}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	e.ns, err = server.NewServer(&server.Options{
		ServerName: "omicsq-bench",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, "jetstream"),
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: 2 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	go e.ns.Start()
	if !e.ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("nats server did not start")
	}
	e.nc, err = nats.Connect(e.ns.ClientURL(), nats.Name("omicsq-bench"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(preloadWindow),
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := queue.Provision(pctx, e.js, e.topo); err != nil {
		return nil, err
	}

	opts := sandbox.Options{Rate: o.SandboxRate, Seed: 1}
	if o.Record || o.Tap {
		e.rec = &recorder{}
		opts.Logger = slog.New(e.rec)
	}
	if o.Sandbox != nil {
		o.Sandbox(&opts)
	}
	e.sb, err = sandbox.New(opts)
	if err != nil {
		return nil, err
	}
	// Only a listener that exists goes into e.sl (a nil pointer in the
	// interface would not read as nil in close).
	if o.Tap {
		t, err := listenTap(ctx, "127.0.0.1:0", e.sb)
		if err != nil {
			return nil, err
		}
		e.tap, e.sl = t, t
	} else {
		l, err := sandbox.Listen(ctx, "127.0.0.1:0", e.sb)
		if err != nil {
			return nil, err
		}
		e.sl = l
	}
	ok = true
	return e, nil
}

// benchTopology is the worker's default topology (its flag defaults).
func benchTopology() queue.Topology {
	t := queue.DefaultTopology()
	t.MaxDeliver = 20 // cmd/worker's --max-deliver default
	return t
}

// close stops the workers (gracefully, briefly), the sandbox and the NATS
// server.
func (e *env) close() {
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() { w.stop(15 * time.Second) })
	}
	wg.Wait()
	if e.sl != nil {
		e.sb.Close()
		_ = e.sl.Close()
	}
	if e.nc != nil {
		e.nc.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
}

// workerArgs are the flags every benchmark passes; extra ones follow.
func (e *env) workerArgs(id string, extra ...string) []string {
	args := []string{
		"--nats-url", e.ns.ClientURL(),
		"--endpoint", e.sl.Addr(), "--insecure-http",
		"--metrics-addr", "127.0.0.1:0",
		"--log-level", "warn",
		"--worker-id", id,
		"--drain-timeout", "3s",
	}
	return append(args, extra...)
}

var sandboxCredentials = []string{
	"TENCENTCLOUD_SECRET_ID=" + sandbox.DefaultSecretID,
	"TENCENTCLOUD_SECRET_KEY=" + sandbox.DefaultSecretKey,
}

func (e *env) startWorker(id string, extra ...string) (*proc, error) {
	p, err := e.h.start(id, e.dir, e.workerArgs(id, extra...), sandboxCredentials)
	if err != nil {
		return nil, err
	}
	e.workers = append(e.workers, p)
	return p, nil
}

// requestBody is a valid RunApplication body with a realistic input (the
// shape of examples/samples.csv's rows), unique by name.
func requestBody(name string) []byte {
	input, _ := json.Marshal(map[string]any{
		"germline_wgs.sample_name":     name,
		"germline_wgs.fastq_r1":        "cos://omicsq-bench-1250000000/synthetic/" + name + "/" + name + "_R1.fastq.gz",
		"germline_wgs.fastq_r2":        "cos://omicsq-bench-1250000000/synthetic/" + name + "/" + name + "_R2.fastq.gz",
		"germline_wgs.read_group":      "@RG\\tID:" + name + "\\tSM:" + name + "\\tPL:ILLUMINA",
		"germline_wgs.reference_fasta": "cos://omicsq-bench-1250000000/reference/GRCh38_no_alt.fa",
		"germline_wgs.cpu":             16,
	})
	body, _ := json.Marshal(map[string]any{
		"ApplicationId":   "app-sweet-cerulean-frog-569111",
		"ProjectId":       "prj-peaceful-pink-bird-631828",
		"Name":            name,
		"Description":     "omicsq benchmark request",
		"EnvironmentId":   "env-05d0g0w2",
		"InputBase64":     base64.StdEncoding.EncodeToString(input),
		"CacheClearDelay": 72,
		"Option":          map[string]any{"FailureMode": "NoNewCalls", "UseCallCache": true, "UseErrorOnHold": false},
	})
	return body
}

// preload publishes n requests named prefix-<i> (key = name) with the
// public client's Publish, one acknowledged publish at a time (the client
// sets the contract's headers: Omicsq-Key, and Nats-Msg-Id = key so a
// retried publish is dropped).
func (e *env) preload(ctx context.Context, prefix string, n int) error {
	c := client.New(e.js, client.WithTopology(e.topo.Topology))
	for i := range n {
		name := fmt.Sprintf("%s-%06d", prefix, i)
		if _, err := c.Publish(ctx, client.Request{Key: name, Body: requestBody(name)}); err != nil {
			return fmt.Errorf("preload %s: %w", name, err)
		}
	}
	return nil
}

// preloadWindow is how many publishes preloadAsync keeps awaiting their
// acknowledgement (the jetstream contexts' WithPublishAsyncMaxPending), and
// preloadBatch how many requests it hands PublishBatch at a time.
const (
	preloadWindow = 4096
	preloadBatch  = 10000
)

// preloadAsync publishes n requests named prefix-<i> (key = name) with the
// public client's PublishBatch (asynchronous publishes, up to preloadWindow
// in flight, the same headers as preload), and fails if any publish is not
// acknowledged.
func preloadAsync(ctx context.Context, js jetstream.JetStream, t queue.Topology, prefix string, n int) error {
	return preloadBodies(ctx, js, t, prefix, n, func(_ int, name string) []byte { return requestBody(name) })
}

// preloadBodies is preloadAsync with the i-th request's body from body.
func preloadBodies(ctx context.Context, js jetstream.JetStream, t queue.Topology, prefix string, n int,
	body func(i int, name string) []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c := client.New(js, client.WithTopology(t.Topology), client.WithPublishWindow(preloadWindow))
	batch := make([]client.Request, 0, min(n, preloadBatch))
	for from := 0; from < n; from += preloadBatch {
		batch = batch[:0]
		for i := from; i < min(n, from+preloadBatch); i++ {
			name := fmt.Sprintf("%s-%06d", prefix, i)
			batch = append(batch, client.Request{Key: name, Body: body(i, name)})
		}
		if _, err := c.PublishBatch(ctx, batch); err != nil {
			var be *client.BatchError
			if errors.As(err, &be) {
				return fmt.Errorf("publish %s: %w", batch[be.Index].Key, be.Err)
			}
			return fmt.Errorf("publish: %w", err)
		}
	}
	return nil
}

// streamMsgs returns the number of messages in a stream.
func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// waitFirstArrival polls the sandbox until the first call of action
// arrives and returns when it arrived.
func (e *env) waitFirstArrival(ctx context.Context, action string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		if as := e.rec.snapshot(action); len(as) > 0 {
			return as[0].At, nil
		}
		for _, w := range e.workers {
			if !w.running() {
				return time.Time{}, fmt.Errorf("%s exited before any call: %v\n%s", w.name, w.err, w.logTail(20))
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no %s call within %v", action, timeout)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleepUntil(ctx context.Context, t time.Time) error { return sleepCtx(ctx, time.Until(t)) }

// checkWorkers fails if a worker that should be running has exited.
func (e *env) checkWorkers(except ...*proc) error {
	for _, w := range e.workers {
		skip := false
		for _, x := range except {
			skip = skip || x == w
		}
		if !skip && !w.running() {
			return fmt.Errorf("%s exited during the run: %v\n%s", w.name, w.err, w.logTail(20))
		}
	}
	return nil
}

// listenAddrs returns the TCP addresses pid listens on, from its socket
// file descriptors and /proc/<pid>/net/tcp: the worker's --metrics-addr is
// 127.0.0.1:0, and at --log-level warn it does not log the port it bound.
func listenAddrs(pid int) []string {
	inodes := map[string]bool{}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(fdDir)
	for _, ent := range ents {
		l, err := os.Readlink(filepath.Join(fdDir, ent.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil
	}
	var addrs []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
			continue
		}
		hostPort := strings.Split(f[1], ":")
		if len(hostPort) != 2 || len(hostPort[0]) != 8 {
			continue
		}
		ip, err1 := strconv.ParseUint(hostPort[0], 16, 32)
		port, err2 := strconv.ParseUint(hostPort[1], 16, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		// /proc/net/tcp shows the address in host (little-endian) order.
		a := net.IPv4(byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24))
		addrs = append(addrs, net.JoinHostPort(a.String(), strconv.Itoa(int(port))))
	}
	return addrs
}

// workerMetrics scrapes a worker's /metrics (found among its listening
// sockets). It returns nil if none answers.
func workerMetrics(pid int) promText {
	client := &http.Client{Timeout: 2 * time.Second}
	for _, addr := range listenAddrs(pid) {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte("omicsq_build_info")) {
			return promText(b)
		}
	}
	return nil
}

// promText is a Prometheus text exposition.
type promText []byte

// sum adds the samples of metric whose label set contains every one of
// labels (each `name="value"`).
func (p promText) sum(metric string, labels ...string) float64 {
	var total float64
	for _, line := range strings.Split(string(p), "\n") {
		if !strings.HasPrefix(line, metric) {
			continue
		}
		rest := line[len(metric):]
		var lbl string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			lbl, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric with this prefix
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(","+lbl+",", ","+l+",")
		}
		if !match {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			total += v
		}
	}
	return total
}
