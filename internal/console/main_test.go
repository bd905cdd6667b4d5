package console_test

import (
	"os"
	"testing"

	"github.com/omicsq/omicsq/sandbox"
)

// The Tencent SDK reads credentials from the process environment; every
// worker of these tests talks to a sandbox with the default ones.
func TestMain(m *testing.M) {
	os.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	os.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	os.Exit(m.Run())
}
