package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	targetThroughput = 2000.0    // submissions/s on the 2-core machine
	targetRSS        = 100 << 20 // bytes
)

type throughputConfig struct {
	Requests    int
	Concurrency []int
	Timeout     time.Duration
	CPUProfile  string // directory for CPU profiles; empty: none
}

func (c *throughputConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Requests, "requests", 20000, "requests preloaded and submitted per run")
	fs.Func("concurrency", "comma-separated worker --concurrency values (default 16,64,256)", func(s string) error {
		n, err := parseInts(s)
		c.Concurrency = n
		return err
	})
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "give up a run after this long")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write CPU profiles of the worker and of the harness (NATS server + sandbox) into this directory and print `go tool pprof -top` of each")
}

type throughputRun struct {
	Concurrency           int
	Requests              int
	Results, DeadLetters  uint64
	RunGroups             int
	Span                  time.Duration // first to last result
	WorkerCPU, HarnessCPU time.Duration
	CPUSubmissions        uint64 // results during the CPU interval
	CPUWall               time.Duration
	Mem                   memInfo
	Others                float64 // other users' CPU, cores
	LoadBefore, LoadAfter string
	Complete              bool
	Profiles              []string
}

func (r throughputRun) Rate() float64 {
	if r.Span <= 0 || r.Results < 2 {
		return 0
	}
	return float64(r.Results-1) / r.Span.Seconds()
}

func perSubmission(d time.Duration, n uint64) time.Duration {
	if n == 0 {
		return 0
	}
	return d / time.Duration(n)
}

func runThroughput(ctx context.Context, h *harness, cfg throughputConfig) (string, error) {
	if len(cfg.Concurrency) == 0 {
		cfg.Concurrency = []int{16, 64, 256}
	}
	bin := h.workerBin
	if cfg.CPUProfile != "" {
		if err := os.MkdirAll(cfg.CPUProfile, 0o755); err != nil {
			return "", err
		}
		var err error
		if bin, err = h.buildProfilingWorker(ctx); err != nil {
			return "", err
		}
	}
	var runs []throughputRun
	for _, c := range cfg.Concurrency {
		r, err := throughputOnce(ctx, h, cfg, bin, c)
		if err != nil {
			return "", fmt.Errorf("throughput concurrency %d: %w", c, err)
		}
		h.logf("throughput c=%d: %.0f submissions/s, worker %v CPU per submission, peak RSS %.1f MiB",
			c, r.Rate(), perSubmission(r.WorkerCPU, r.CPUSubmissions), mib(r.Mem.HWM))
		runs = append(runs, r)
	}
	return throughputMarkdown(cfg, runs), nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func throughputOnce(ctx context.Context, h *harness, cfg throughputConfig, bin string, conc int) (throughputRun, error) {
	r := throughputRun{Concurrency: conc, Requests: cfg.Requests}
	h.logf("throughput: %d requests, one worker, --rate 0 --concurrency %d, sandbox unlimited", cfg.Requests, conc)
	e, err := h.newEnv(ctx, fmt.Sprintf("throughput-%d", conc), envOptions{SandboxRate: 0})
	if err != nil {
		return r, err
	}
	defer e.close()
	pubStart := time.Now()
	if err := preloadAsync(ctx, e.js, e.topo, fmt.Sprintf("tp-%d", conc), cfg.Requests); err != nil {
		return r, err
	}
	h.logf("throughput: preloaded %d requests in %v", cfg.Requests, time.Since(pubStart).Round(time.Millisecond))

	r.LoadBefore = loadAvg()
	var extraEnv []string
	workerProfile := ""
	if cfg.CPUProfile != "" {
		workerProfile = filepath.Join(cfg.CPUProfile, fmt.Sprintf("worker-c%d.pprof", conc))
		extraEnv = append(extraEnv, "OMICSQ_BENCH_CPUPROFILE="+workerProfile)
	}
	args := e.workerArgs("w1", "--rate", "0", "--concurrency", strconv.Itoa(conc))
	p, err := h.startBin(bin, "w1", e.dir, args, append(extraEnv, sandboxCredentials...))
	if err != nil {
		return r, err
	}
	e.workers = append(e.workers, p)
	var harnessProfile *os.File
	if cfg.CPUProfile != "" {
		path := filepath.Join(cfg.CPUProfile, fmt.Sprintf("harness-c%d.pprof", conc))
		if harnessProfile, err = os.Create(path); err != nil {
			return r, err
		}
		if err := pprof.StartCPUProfile(harnessProfile); err != nil {
			harnessProfile.Close()
			return r, err
		}
		r.Profiles = append(r.Profiles, workerProfile, path)
	}
	stopHarnessProfile := func() {
		if harnessProfile != nil {
			pprof.StopCPUProfile()
			harnessProfile.Close()
			harnessProfile = nil
		}
	}
	defer stopHarnessProfile()

	meter := newCPUMeter(p.pid())
	type sample struct {
		results  uint64
		wcpu, hc time.Duration
		at       time.Time
	}
	var first, last sample
	deadline := time.Now().Add(cfg.Timeout)
	for {
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return r, err
		}
		res, err1 := streamMsgs(ctx, e.js, e.topo.ResultsStream)
		dlq, err2 := streamMsgs(ctx, e.js, e.topo.DLQStream)
		wcpu, err3 := procCPU(p.pid())
		hcpu, _ := procCPU(0)
		if err1 != nil || err2 != nil || err3 != nil {
			if !p.running() {
				return r, fmt.Errorf("worker exited: %v\n%s", p.err, p.logTail(20))
			}
			continue
		}
		s := sample{results: res, wcpu: wcpu, hc: hcpu, at: time.Now()}
		if first.at.IsZero() && res > 0 {
			first = s
		}
		last = s
		if res+dlq >= uint64(cfg.Requests) {
			r.Complete = true
			break
		}
		if time.Now().After(deadline) {
			h.logf("throughput: timeout with %d of %d settled", res+dlq, cfg.Requests)
			break
		}
	}
	stopHarnessProfile()
	r.Mem, _ = procMem(p.pid())
	u := meter.read()
	r.Others = u.Cores(u.Others())
	r.LoadAfter = loadAvg()
	if workerProfile != "" {
		_ = p.cmd.Process.Signal(syscall.SIGUSR1) // the profiling build stops its profile
		waitFile(workerProfile+".done", 10*time.Second)
	}
	r.WorkerCPU, r.HarnessCPU = last.wcpu-first.wcpu, last.hc-first.hc
	r.CPUSubmissions, r.CPUWall = last.results-first.results, last.at.Sub(first.at)
	e.stopWorkers()

	s, err := e.js.Stream(ctx, e.topo.ResultsStream)
	if err != nil {
		return r, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return r, err
	}
	r.Results = info.State.Msgs
	r.Span = info.State.LastTime.Sub(info.State.FirstTime)
	r.DeadLetters, _ = streamMsgs(ctx, e.js, e.topo.DLQStream)
	r.RunGroups = e.sb.Stats().RunGroupsCreated
	return r, nil
}

func waitFile(path string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBin is start with another binary (the profiling build).
func (h *harness) startBin(bin, name, dir string, args, extraEnv []string) (*proc, error) {
	saved := h.workerBin
	h.workerBin = bin
	defer func() { h.workerBin = saved }()
	return h.start(name, dir, args, extraEnv)
}

// profilingSource is added to cmd/worker by a build overlay (the tree is not
// changed): with OMICSQ_BENCH_CPUPROFILE set, the worker profiles its CPU
// from start until SIGUSR1.
const profilingSource = `package main

import (
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func init() {
	path := os.Getenv("OMICSQ_BENCH_CPUPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		<-ch
		pprof.StopCPUProfile()
		f.Close()
		_ = os.WriteFile(path+".done", nil, 0o644)
	}()
}
`

func (h *harness) buildProfilingWorker(ctx context.Context) (string, error) {
	src := filepath.Join(h.tmp, "zz_bench_cpuprofile.go")
	if err := os.WriteFile(src, []byte(profilingSource), 0o644); err != nil {
		return "", err
	}
	overlay, _ := json.Marshal(map[string]map[string]string{
		"Replace": {filepath.Join(h.root, "cmd", "worker", "zz_bench_cpuprofile.go"): src},
	})
	ovPath := filepath.Join(h.tmp, "overlay.json")
	if err := os.WriteFile(ovPath, overlay, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(h.tmp, "worker-cpuprofile")
	h.logf("building cmd/worker with a CPU-profile hook (build overlay) into %s", bin)
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-overlay", ovPath, "-o", bin, "./cmd/worker")
	cmd.Dir = h.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (profiling): %w\n%s", err, out)
	}
	return bin, nil
}

func throughputMarkdown(cfg throughputConfig, runs []throughputRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Throughput, CPU and memory: `go run ./bench throughput`\n\n")
	fmt.Fprintf(&b, "One worker process, sandbox limit lifted (`Rate: 0`), worker `--rate 0`; %d requests preloaded. Submissions/s = "+
		"(results − 1) ÷ (time of the last result − time of the first), from the results stream's own timestamps. CPU per "+
		"submission = the process's utime+stime (`/proc/<pid>/stat`) between the first and the last poll that saw results, ÷ "+
		"the results published in between. \"Harness\" is the benchmark process: the NATS server and the sandbox (and a 5 Hz poll). "+
		"Peak RSS is `VmHWM` of the worker.\n\n", cfg.Requests)
	b.WriteString("| worker --concurrency | submissions/s | worker CPU per submission | harness (NATS + sandbox) CPU per submission | worker peak RSS | results · dead letters · run groups | others' CPU, cores | load avg before → after | targets (≥ 2,000/s, ≤ 100 MiB) |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, r := range runs {
		rate := fmt.Sprintf("%.0f", r.Rate())
		if !r.Complete {
			rate += " (timed out)"
		}
		fmt.Fprintf(&b, "| %d | %s | %v | %v | %.1f MiB | %d · %d · %d | %.2f | %s → %s | %s |\n",
			r.Concurrency, rate, perSubmission(r.WorkerCPU, r.CPUSubmissions).Round(time.Microsecond),
			perSubmission(r.HarnessCPU, r.CPUSubmissions).Round(time.Microsecond), mib(r.Mem.HWM),
			r.Results, r.DeadLetters, r.RunGroups, r.Others, r.LoadBefore, r.LoadAfter,
			yesNo(r.Rate() >= targetThroughput && r.Mem.HWM <= targetRSS))
	}
	b.WriteString("\n")
	for _, r := range runs {
		for _, p := range r.Profiles {
			out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", p).CombinedOutput()
			if err != nil {
				fmt.Fprintf(&b, "pprof %s: %v\n\n", p, err)
				continue
			}
			fmt.Fprintf(&b, "`go tool pprof -top -nodecount=25 %s`:\n\n```\n%s```\n\n", p, out)
		}
	}
	return b.String()
}
