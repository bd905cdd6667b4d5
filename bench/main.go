// Command bench runs omicsq's benchmarks, one command per benchmark, and
// prints the results as Markdown (docs/benchmarks.md holds the numbers).
//
//	go run ./bench limiter    [--duration 60s] [--workers 1,3,6] [--baseline=true]
//	go run ./bench kill       [--before 20s] [--after 40s]
//	go run ./bench outside    [--rate 10] [--duration 60s]
//	go run ./bench throughput [--requests 20000] [--concurrency 16,64,256] [--cpuprofile DIR]
//	go run ./bench backlog    [--pending 100000] [--wait 20s] [--all-in-one=true]
//	go run ./bench faults     [--requests 600] [--workers 3] [--ctf 0.30] [--internal-error 0.10]
//	                          [--kill-every 5s] [--lag 0] [--timeout 150s] [--worker-flags FLAGS]...
//	go run ./bench tracker    [--groups 10000] [--batches 0] [--rows 4] [--rate 20] [--share 0.25]
//	                          [--cycles 3] [--interval 5s] [--run-duration 2h]
//	go run ./bench console    [--dead-letters 100000] [--reps 30]
//	go run ./bench lanes      [--workers 1,3] [--routine 10000] [--urgent 50] [--urgent-rate 5] [--steady 15s]
//	go run ./bench fairness   [--workers 1,3] [--large 5000] [--small 50] [--weighted 1500] [--window 20s]
//	go run ./bench all        [--out FILE]
//
// Every subcommand also takes --out FILE (write the Markdown there too),
// --worker-bin PATH (use a built worker instead of building cmd/worker) and
// --keep (keep the temporary directory: stores, worker logs).
//
// Each run builds cmd/worker once, starts an embedded NATS JetStream server
// and the sandbox Omics API (over real HTTP) inside this process, on
// 127.0.0.1 with random ports and temporary stores, and worker processes
// pointed at them. Everything is bounded in time and every child process is
// stopped on exit (and killed by the kernel if this process dies). Progress
// goes to stderr, the Markdown to stdout.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: go run ./bench <limiter|kill|outside|throughput|backlog|faults|tracker|lanes|fairness|console|all> [flags]
       go run ./bench <subcommand> -h     (flags of a subcommand)
`

// commonFlags are the flags of every subcommand.
type commonFlags struct {
	out       string
	workerBin string
	keep      bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("bench "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	fs.StringVar(&c.out, "out", "", "also write the Markdown to this file")
	fs.StringVar(&c.workerBin, "worker-bin", "", "worker binary to run (default: go build ./cmd/worker)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (stores, worker logs)")

	var lim limiterConfig
	var kill killConfig
	var out outsideConfig
	var tp throughputConfig
	var bl backlogConfig
	var flt faultsConfig
	var trk trackerConfig
	var con consoleConfig
	var ln lanesConfig
	var fair fairnessConfig
	switch sub {
	case "limiter":
		lim.flags(fs)
	case "kill":
		kill.flags(fs)
	case "outside":
		out.flags(fs)
	case "throughput":
		tp.flags(fs)
	case "backlog":
		bl.flags(fs)
	case "faults":
		flt.flags(fs)
	case "tracker":
		trk.flags(fs)
	case "lanes":
		ln.flags(fs)
	case "fairness":
		fair.flags(fs)
	case "console":
		con.flags(fs)
	case "all":
		// Registering a benchmark's flags sets its defaults; `all` exposes
		// only the knobs that shorten a trial run.
		for _, f := range []func(*flag.FlagSet){lim.flags, kill.flags, out.flags, tp.flags, bl.flags, flt.flags, trk.flags, ln.flags, fair.flags, con.flags} {
			f(flag.NewFlagSet("", flag.ContinueOnError))
		}
		fs.DurationVar(&lim.Duration, "duration", lim.Duration, "limiter: steady state per run")
		fs.IntVar(&tp.Requests, "requests", tp.Requests, "throughput: requests per run")
		fs.IntVar(&bl.Pending, "pending", bl.Pending, "backlog: requests published")
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown subcommand %q\n%s", sub, usage)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}

	h, err := newHarness(ctx, stderr, c.workerBin, c.keep)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	defer h.close()

	var md strings.Builder
	md.WriteString(header(h, strings.Join(append([]string{"go run ./bench"}, args...), " ")))
	benches := map[string]func() (string, error){
		"limiter":    func() (string, error) { return runLimiter(ctx, h, lim) },
		"kill":       func() (string, error) { return runKill(ctx, h, kill) },
		"outside":    func() (string, error) { return runOutside(ctx, h, out) },
		"throughput": func() (string, error) { return runThroughput(ctx, h, tp) },
		"backlog":    func() (string, error) { return runBacklog(ctx, h, bl) },
		"faults":     func() (string, error) { return runFaults(ctx, h, flt) },
		"tracker":    func() (string, error) { return runTracker(ctx, h, trk) },
		"lanes":      func() (string, error) { return runLanes(ctx, h, ln) },
		"fairness":   func() (string, error) { return runFairness(ctx, h, fair) },
		"console":    func() (string, error) { return runConsole(ctx, h, con) },
	}
	order := []string{sub}
	if sub == "all" {
		order = []string{"limiter", "kill", "outside", "throughput", "backlog", "faults", "tracker", "lanes", "fairness", "console"}
	}
	failed := false
	for _, name := range order {
		if ctx.Err() != nil {
			break
		}
		started := time.Now()
		section, err := benches[name]()
		if err != nil {
			fmt.Fprintf(stderr, "bench %s: %v\n", name, err)
			fmt.Fprintf(&md, "## %s\n\nFAILED: %v\n\n", name, err)
			failed = true
			continue
		}
		h.logf("%s done in %v", name, time.Since(started).Round(time.Second))
		md.WriteString(section)
	}
	fmt.Fprintf(&md, "Load average at the end: %s.\n", loadAvg())
	fmt.Fprint(stdout, md.String())
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(md.String()), 0o644); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
	}
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

// header describes the machine and the code measured.
func header(h *harness, command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# omicsq benchmark run\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| command | `%s` |\n", command)
	fmt.Fprintf(&b, "| date | %s |\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "| machine | %d cores (`nproc`), %s, %s |\n", runtime.NumCPU(), cpuModel(), memTotal())
	fmt.Fprintf(&b, "| Go | %s %s/%s |\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "| commit | %s (plus the working tree's uncommitted changes) |\n", gitHead(h.root))
	fmt.Fprintf(&b, "| internal/ratelimit source digest | %s |\n", sourceDigest(filepath.Join(h.root, "internal", "ratelimit")))
	fmt.Fprintf(&b, "| load average at start | %s |\n\n", loadAvg())
	return b.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
			var kb int64
			fmt.Sscan(strings.TrimSpace(v), &kb)
			return fmt.Sprintf("%.1f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return "unknown RAM"
}

// gitHead reads the commit without any git command that could write
// (no status, no index refresh).
func gitHead(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// sourceDigest identifies the limiter code measured (its author may still
// be changing it): SHA-256 over its non-test Go files.
func sourceDigest(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	slices.Sort(files)
	sum := sha256.New()
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		fmt.Fprintf(sum, "%s\x00%d\x00", filepath.Base(f), len(b))
		sum.Write(b)
		n++
	}
	return fmt.Sprintf("%s (%d files)", hex.EncodeToString(sum.Sum(nil))[:16], n)
}
