// Package faultsuite is omicsq's fault suite: end-to-end scenarios that run
// the real cmd/worker binary against embedded NATS JetStream servers and the
// sandbox Omics API over real HTTP, inject faults (API errors, ambiguous
// outcomes, SIGKILL, SIGTERM, NATS restarts, cluster node loss, redrives,
// exhausted deliveries) and judge the outcome from the sandbox's own
// registry and the results and dead-letter streams. docs/reliability.md
// describes the guarantees, the failure model and the figures measured here.
package faultsuite

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// workerBin and enqueueBin are the cmd/worker and cmd/enqueue binaries
// TestMain builds once for the package.
var workerBin, enqueueBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "omicsq-faultsuite-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faultsuite:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	workerBin, enqueueBin = filepath.Join(dir, "worker"), filepath.Join(dir, "enqueue")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	start := time.Now()
	// Built without -race on purpose: the worker processes are the system
	// under test, and three of them plus the race-instrumented test process
	// share two cores. The worker's own packages are race-tested elsewhere.
	// The lifecycle acceptance test runs cmd/enqueue as a user would, for
	// its output and exit status.
	for _, b := range []struct{ out, pkg string }{
		{workerBin, "github.com/omicsq/omicsq/cmd/worker"}, {enqueueBin, "github.com/omicsq/omicsq/cmd/enqueue"},
	} {
		cmd := exec.Command(goTool, "build", "-o", b.out, b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "faultsuite: building %s: %v\n", b.pkg, err)
			return 1
		}
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "faultsuite: built cmd/worker and cmd/enqueue in %v\n", time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}
