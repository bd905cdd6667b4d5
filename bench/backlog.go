package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/queue"
)

type backlogConfig struct {
	Pending  int
	Wait     time.Duration
	AllInOne bool
}

func (c *backlogConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Pending, "pending", 100000, "requests published before measuring")
	fs.DurationVar(&c.Wait, "wait", 20*time.Second, "how long the worker runs on the backlog before its memory is read")
	fs.BoolVar(&c.AllInOne, "all-in-one", true, "also measure `worker --sandbox` with its embedded JetStream server holding the backlog")
}

type backlogRun struct {
	Mode                  string
	Published             int
	PublishTime           time.Duration
	Idle                  memInfo // before the backlog (all-in-one only)
	Mem                   memInfo
	Pending               uint64 // consumer's num_pending when measured
	Results               uint64
	LoadBefore, LoadAfter string
	Note                  string
}

func runBacklog(ctx context.Context, h *harness, cfg backlogConfig) (string, error) {
	var runs []backlogRun
	r, err := backlogSeparate(ctx, h, cfg)
	if err != nil {
		return "", fmt.Errorf("backlog: %w", err)
	}
	runs = append(runs, r)
	if cfg.AllInOne {
		r, err := backlogAllInOne(ctx, h, cfg)
		if err != nil {
			return "", fmt.Errorf("backlog all-in-one: %w", err)
		}
		runs = append(runs, r)
	}
	return backlogMarkdown(cfg, runs), nil
}

// backlogSeparate: the backlog sits in the harness's NATS server; the
// worker process only pulls from it.
func backlogSeparate(ctx context.Context, h *harness, cfg backlogConfig) (backlogRun, error) {
	r := backlogRun{Mode: "worker → separate NATS server", Published: cfg.Pending}
	h.logf("backlog: publishing %d requests, then one worker at --rate 20 for %v", cfg.Pending, cfg.Wait)
	e, err := h.newEnv(ctx, "backlog", envOptions{SandboxRate: apiLimit})
	if err != nil {
		return r, err
	}
	defer e.close()
	start := time.Now()
	if err := preloadAsync(ctx, e.js, e.topo, "backlog", cfg.Pending); err != nil {
		return r, err
	}
	r.PublishTime = time.Since(start)
	r.LoadBefore = loadAvg()
	p, err := e.startWorker("w1", "--rate", "20")
	if err != nil {
		return r, err
	}
	if err := sleepCtx(ctx, cfg.Wait); err != nil {
		return r, err
	}
	if err := e.checkWorkers(); err != nil {
		return r, err
	}
	r.Mem, _ = procMem(p.pid())
	r.LoadAfter = loadAvg()
	r.Pending = numPending(ctx, e.js, e.topo)
	r.Results, _ = streamMsgs(ctx, e.js, e.topo.ResultsStream)
	h.logf("backlog: peak RSS %.1f MiB, RSS %.1f MiB, %d pending", mib(r.Mem.HWM), mib(r.Mem.RSS), r.Pending)
	return r, nil
}

// backlogAllInOne: `worker --sandbox` with its embedded JetStream server, so
// the backlog's store is in the worker process.
func backlogAllInOne(ctx context.Context, h *harness, cfg backlogConfig) (backlogRun, error) {
	r := backlogRun{Mode: "`worker --sandbox` (embedded JetStream + sandbox in the worker)", Published: cfg.Pending}
	h.logf("backlog all-in-one: worker --sandbox, then %d requests published to its embedded server, then %v", cfg.Pending, cfg.Wait)
	dir, err := os.MkdirTemp(h.tmp, "backlog-aio-")
	if err != nil {
		return r, err
	}
	port, err := freePort()
	if err != nil {
		return r, err
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	r.LoadBefore = loadAvg()
	args := []string{
		"--sandbox", "--sandbox-rate", "20", "--rate", "20",
		"--store-dir", filepath.Join(dir, "jetstream"), "--embedded-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--metrics-addr", "127.0.0.1:0", "--log-level", "warn", "--worker-id", "aio", "--drain-timeout", "3s",
	}
	p, err := h.start("aio", dir, args, nil)
	if err != nil {
		return r, err
	}
	defer p.stop(15 * time.Second)

	// Wait for the embedded server and the worker's topology.
	var nc *nats.Conn
	var js jetstream.JetStream
	topo := benchTopology()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !p.running() {
			return r, fmt.Errorf("worker exited: %v\n%s", p.err, p.logTail(20))
		}
		if nc == nil {
			nc, _ = nats.Connect(url, nats.Name("omicsq-bench"))
		}
		if nc != nil {
			if js == nil {
				js, _ = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(preloadWindow),
					jetstream.WithPublishAsyncTimeout(10*time.Second))
			}
			if _, err := js.Stream(ctx, topo.RequestsStream); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("embedded server or topology not ready within 30 s\n%s", p.logTail(20))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return r, err
		}
	}
	defer nc.Close()
	if err := sleepCtx(ctx, time.Second); err != nil { // let it settle into consuming
		return r, err
	}
	r.Idle, _ = procMem(p.pid())
	start := time.Now()
	if err := preloadAsync(ctx, js, topo, "backlog-aio", cfg.Pending); err != nil {
		return r, err
	}
	r.PublishTime = time.Since(start)
	if err := sleepCtx(ctx, cfg.Wait); err != nil {
		return r, err
	}
	if !p.running() {
		return r, fmt.Errorf("worker exited: %v\n%s", p.err, p.logTail(20))
	}
	r.Mem, _ = procMem(p.pid())
	r.LoadAfter = loadAvg()
	r.Pending = numPending(ctx, js, topo)
	r.Results, _ = streamMsgs(ctx, js, topo.ResultsStream)
	r.Note = fmt.Sprintf("RSS before the backlog: %.1f MiB", mib(r.Idle.RSS))
	h.logf("backlog all-in-one: peak RSS %.1f MiB, RSS %.1f MiB, %d pending", mib(r.Mem.HWM), mib(r.Mem.RSS), r.Pending)
	return r, nil
}

func numPending(ctx context.Context, js jetstream.JetStream, t queue.Topology) uint64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, t.RequestsStream, t.Consumer)
	if err != nil {
		return 0
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0
	}
	return info.NumPending
}

// freePort returns a loopback port that was free a moment ago (the
// worker's embedded server needs a known address; a clash is unlikely on
// loopback and would fail the run loudly).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func backlogMarkdown(cfg backlogConfig, runs []backlogRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Memory with a large backlog: `go run ./bench backlog`\n\n")
	fmt.Fprintf(&b, "%d requests published (the public client's PublishBatch), one worker at `--rate 20` (sandbox limit 20/s), so the "+
		"backlog stays ~%dk pending; memory read %v after the worker started (separate NATS) or after the backlog was published "+
		"(all-in-one). Peak = `VmHWM`, now = `VmRSS` of the worker process.\n\n", cfg.Pending, cfg.Pending/1000, cfg.Wait)
	b.WriteString("| mode | publish time | worker peak RSS | worker RSS now | pending when read | results | load avg before → after | ≤ 100 MiB | note |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---|---|---|\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "| %s | %v (%.0f/s) | %.1f MiB | %.1f MiB | %d | %d | %s → %s | %s | %s |\n",
			r.Mode, r.PublishTime.Round(10*time.Millisecond), float64(r.Published)/r.PublishTime.Seconds(),
			mib(r.Mem.HWM), mib(r.Mem.RSS), r.Pending, r.Results, r.LoadBefore, r.LoadAfter, yesNo(r.Mem.HWM <= targetRSS), r.Note)
	}
	b.WriteString("\n")
	return b.String()
}
