package helmcheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckImageFileChecks runs scripts/check-image.sh --no-build on the real Dockerfile
// (must pass) and on broken copies in testdata (each must fail, naming its defect), so the
// grep-level checks are known to bite. The static build itself runs in scripts/check-chart.sh.
func TestCheckImageFileChecks(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found")
	}
	script, err := filepath.Abs(filepath.Join(repoRoot, "scripts", "check-image.sh"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(dockerfile string) (string, error) {
		cmd := exec.Command(bash, script, "--no-build")
		cmd.Env = append(os.Environ(), "DOCKERFILE="+dockerfile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	real, _ := filepath.Abs(filepath.Join(repoRoot, "Dockerfile"))
	if out, err := run(real); err != nil {
		t.Fatalf("the Dockerfile fails its checks: %v\n%s", err, out)
	}
	for file, want := range map[string]string{
		"Dockerfile.bad-user-root":        "numeric non-root USER",
		"Dockerfile.bad-user-name":        "numeric non-root USER",
		"Dockerfile.bad-entrypoint-shell": `ENTRYPOINT must be ["/worker"]`,
		"Dockerfile.bad-cgo":              "go build lacks CGO_ENABLED=0",
		"Dockerfile.bad-base":             "final stage must be",
		"Dockerfile.bad-missing-enqueue":  ".../enqueue /enqueue",
	} {
		t.Run(file, func(t *testing.T) {
			path, _ := filepath.Abs(filepath.Join("testdata", file))
			out, err := run(path)
			if err == nil {
				t.Fatalf("check-image.sh accepted %s:\n%s", file, out)
			}
			if !strings.Contains(out, want) {
				t.Errorf("check-image.sh rejected %s, but without %q:\n%s", file, want, out)
			}
		})
	}
}
