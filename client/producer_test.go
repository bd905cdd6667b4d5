package client_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProducerExampleUsesOnlyThePublicPackage builds and runs
// examples/producer, a program in a module of its own, against an
// in-process worker: the public package is enough to publish and wait.
func TestProducerExampleUsesOnlyThePublicPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a separate module")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	natsURL, stop := startLocalWorker(ctx)
	defer stop()
	dir := t.TempDir()
	var files []string
	for i := range 3 {
		f := filepath.Join(dir, fmt.Sprintf("lims-S-%d.json", i))
		body := fmt.Sprintf(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"producer-%d","InputBase64":"e30="}`, i)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	list := exec.CommandContext(ctx, "go", "list", "-f", "{{join .Imports \" \"}}", ".")
	list.Dir = filepath.Join("..", "examples", "producer")
	imports, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, imports)
	}
	if !strings.Contains(string(imports), "github.com/omicsq/omicsq/client") {
		t.Fatalf("the example does not import the client: %s", imports)
	}
	for _, d := range strings.Fields(string(imports)) {
		if strings.HasPrefix(d, "github.com/omicsq/omicsq") && d != "github.com/omicsq/omicsq/client" {
			t.Errorf("the example imports %s; it should need only the public client", d)
		}
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", ".", "-nats", natsURL, "-timeout", "60s"}, files...)...)
	cmd.Dir = list.Dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("producer: %v\n%s", err, out)
	}
	for i := range 3 {
		if !strings.Contains(string(out), fmt.Sprintf("lims-S-%d run-group run-", i)) {
			t.Errorf("no run group for lims-S-%d:\n%s", i, out)
		}
	}
}
