package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHarnessSmoke proves the harness still works end to end: it builds the
// worker, runs a tiny limiter benchmark (one worker, a few seconds) and a
// tiny throughput benchmark, and checks what is not a matter of speed: the
// runs complete, the raw arrival log agrees with the sandbox's counters, and
// every request ends as exactly one result and one run group. It asserts no
// timing; the numbers are the benchmarks' to report.
func TestHarnessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, the sandbox and worker processes for a few seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildWorker(ctx, t)

	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"limiter", "--worker-bin", bin, "--workers", "1", "--baseline=false",
		"--warmup", "1s", "--duration", "2s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench limiter exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	md := stdout.String()
	if !strings.Contains(md, "## Limiter accuracy") || !strings.Contains(md, "| global | 1 |") {
		t.Fatalf("limiter report lacks its table:\n%s", md)
	}
	if !strings.HasSuffix(strings.TrimSpace(rowOf(md, "| global | 1 |")), "| ok |") {
		t.Errorf("raw arrival log disagrees with the sandbox's statistics:\n%s", rowOf(md, "| global | 1 |"))
	}

	stdout.Reset()
	stderr.Reset()
	code = run(ctx, []string{"throughput", "--worker-bin", bin, "--requests", "200", "--concurrency", "8", "--timeout", "60s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench throughput exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	md = stdout.String()
	// results · dead letters · run groups: every request exactly once.
	if !strings.Contains(rowOf(md, "| 8 |"), "| 200 · 0 · 200 |") {
		t.Fatalf("throughput run did not submit each of 200 requests exactly once:\n%s", md)
	}

	// A small faults run: SIGKILLs, commit-then-fail and InternalError;
	// every request must end as exactly one result and one run group, with
	// no dead letter, and the tap's log must agree with the sandbox.
	stdout.Reset()
	stderr.Reset()
	code = run(ctx, []string{"faults", "--worker-bin", bin, "--requests", "60", "--workers", "2", "--kill-every", "3s",
		"--timeout", "60s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench faults exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	md = stdout.String()
	if !strings.Contains(md, "## Goodput under faults") {
		t.Fatalf("faults report lacks its section:\n%s", md)
	}
	var rows []string
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| (defaults) |") {
			rows = append(rows, line)
		}
	}
	if len(rows) != 2 {
		t.Fatalf("faults report has %d rows for the run, want 2:\n%s", len(rows), md)
	}
	// results · dead letters · duplicates: every request exactly once.
	if !strings.Contains(rows[0], "| 60 · 0 · 0 |") || strings.Contains(rows[0], "not drained") {
		t.Errorf("faults run did not settle each of 60 requests exactly once:\n%s", rows[0])
	}
	if !strings.HasSuffix(strings.TrimSpace(rows[1]), "| ok |") {
		t.Errorf("the tap's log disagrees with the sandbox's statistics:\n%s", rows[1])
	}
}

func rowOf(md, prefix string) string {
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

// TestTrackerBenchSmoke runs the tracker benchmark on 250 run groups: the
// seeding worker submits each once, the tracker worker announces each, and
// its measured cycles cost ceil(250/100) = 3 DescribeRunGroups calls by its
// own gauge and none else, and the sandbox's record agrees with the
// sandbox's counters. It asserts no timing.
func TestTrackerBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, the sandbox and two worker processes for a few seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildWorker(ctx, t)
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"tracker", "--worker-bin", bin, "--groups", "250", "--cycles", "2", "--interval", "1s",
		"--timeout", "60s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench tracker exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	md := stdout.String()
	if !strings.Contains(md, "## Run tracker at scale") {
		t.Fatalf("tracker report lacks its section:\n%s", md)
	}
	var measured int
	for _, line := range strings.Split(md, "\n") {
		if strings.Contains(line, "| measured |") {
			measured++
			// The bracketed count at the API depends on when the harness saw
			// the cycle end (it polls), so a call may land in the next row;
			// the tracker's own count may not vary.
			if !strings.Contains(line, "| measured | 3 (") || !strings.Contains(line, "| 0 (0) | 0 |") {
				t.Errorf("a measured cycle did not cost 3 DescribeRunGroups calls, none else, and no events:\n%s", line)
			}
		}
	}
	// A cycle counts as measured only once every group was known and
	// announced, so two measured cycles also prove that.
	if measured != 2 {
		t.Errorf("%d measured cycles, want 2:\n%s", measured, md)
	}
	for _, row := range []string{"| Describe calls per cycle (tracker) |", "| DescribeRunGroups calls/s at the API |"} {
		if !strings.HasSuffix(strings.TrimSpace(rowOf(md, row)), ": yes |") {
			t.Errorf("row says no:\n%s", rowOf(md, row))
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(rowOf(md, "| log check |")), "| ok |") {
		t.Errorf("the arrival log disagrees with the sandbox's statistics:\n%s", rowOf(md, "| log check |"))
	}
}

// TestConsoleBenchSmoke runs the console benchmark on 2,000 dead letters:
// the index holds them all and every query returns the count its filter
// selects (the spread of reasons, codes and days is fixed). It asserts no
// timing.
func TestConsoleBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS and the console for a few seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"console", "--dead-letters", "2000", "--reps", "2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("bench console exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	md := stdout.String()
	for _, want := range []string{"| no filter, first page | 2000 |", "| reason (retries_exhausted, ~20%) | 400 |",
		"| error code (InternalError, ~10%) | 200 |", "| batch (1 of 200, ~0.5%) | 10 |", "| one key | 1 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("console report lacks %q:\n%s", want, md)
		}
	}
}

// TestLanesBenchSmoke runs tiny lanes and fairness benchmarks (one worker,
// a few seconds each) and checks what is not a matter of speed: every
// urgent request is called, every small-key request is called, no Name is
// submitted twice, and the tap's log agrees with the sandbox. It asserts no
// timing; the numbers are the benchmarks' to report.
func TestLanesBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, the sandbox and worker processes for a few seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildWorker(ctx, t)
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"lanes", "--worker-bin", bin, "--workers", "1", "--routine", "300", "--steady", "2s",
		"--urgent", "5"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench lanes exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	row := rowOf(stdout.String(), "| 1 |")
	if row == "" || strings.Contains(row, "never called") || !strings.Contains(row, "| 0 | ok |") {
		t.Fatalf("lanes run: an urgent request was not called, a Name was submitted twice or the log disagrees:\n%s", stdout.String())
	}

	stdout.Reset()
	stderr.Reset()
	code = run(ctx, []string{"fairness", "--worker-bin", bin, "--workers", "1", "--large", "200", "--small", "10",
		"--weighted", "200", "--window", "3s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench fairness exited %d\nstderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	row = rowOf(stdout.String(), "| 1 |")
	if row == "" || strings.Contains(row, "of 10 called") || !strings.Contains(row, "| 0 | ok |") {
		t.Fatalf("fairness run: a small-key request was not called, a Name was submitted twice or the log disagrees:\n%s", stdout.String())
	}
}

// buildWorker builds cmd/worker into the test's temporary directory, as
// --worker-bin takes it.
func buildWorker(ctx context.Context, t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	build := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", bin, "../cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
