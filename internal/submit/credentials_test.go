package submit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

// clearCredentialEnv unsets every variable CredentialFromEnvironment and
// the SDK chain read, and points HOME at an empty directory, for the
// duration of the test. Tests using it cannot run in parallel.
func clearCredentialEnv(t *testing.T) {
	t.Helper()
	vars := append([]string{EnvSecretID, EnvSecretKey, EnvSessionToken, common.EnvCredentialFile}, tkeVars...)
	for _, v := range vars {
		t.Setenv(v, "") // restores the original value after the test
		os.Unsetenv(v)
	}
	t.Setenv("HOME", t.TempDir())
}

const secretInEnv = "SECRET-VALUE-4711"

func TestCredentialFromStaticEnvironment(t *testing.T) {
	clearCredentialEnv(t)
	t.Setenv(EnvSecretID, "AKID-env")
	t.Setenv(EnvSecretKey, secretInEnv)

	cred, err := CredentialFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	if id, key, token := cred.GetCredential(); id != "AKID-env" || key != secretInEnv || token != "" {
		t.Errorf("got id %q key %q token %q", id, key, token)
	}

	t.Setenv(EnvSessionToken, "sts-token")
	cred, err = CredentialFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	if token := cred.GetToken(); token != "sts-token" {
		t.Errorf("token = %q, want the session token", token)
	}
}

func TestCredentialFromEnvironmentRejectsPartialConfiguration(t *testing.T) {
	cases := []struct {
		name     string
		env      map[string]string
		wantVars []string
	}{
		{"only the secret key", map[string]string{EnvSecretKey: secretInEnv}, []string{EnvSecretID, EnvSecretKey}},
		{"empty secret id", map[string]string{EnvSecretID: "", EnvSecretKey: secretInEnv}, []string{EnvSecretID, EnvSecretKey}},
		{"half of TKE", map[string]string{"TKE_REGION": "ap-guangzhou", "TKE_ROLE_ARN": "qcs::cam::uin/1:roleName/" + secretInEnv},
			[]string{"TKE_PROVIDER_ID", "TKE_WEB_IDENTITY_TOKEN_FILE"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearCredentialEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cred, err := CredentialFromEnvironment()
			if err == nil || cred != nil {
				t.Fatalf("got %v, %v; want an error", cred, err)
			}
			for _, v := range tc.wantVars {
				if !strings.Contains(err.Error(), v) {
					t.Errorf("error %q does not name %s", err, v)
				}
			}
			if strings.Contains(err.Error(), secretInEnv) {
				t.Errorf("error %q contains a value", err)
			}
		})
	}
}

func TestCredentialFromProfileFile(t *testing.T) {
	clearCredentialEnv(t)
	path := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(path, []byte("[default]\nsecret_id = AKID-file\nsecret_key = "+secretInEnv+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(common.EnvCredentialFile, path)

	cred, err := CredentialFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	if id, key, _ := cred.GetCredential(); id != "AKID-file" || key != secretInEnv {
		t.Errorf("got id %q key %q", id, key)
	}
}

func TestCredentialFromEnvironmentFailureNamesSources(t *testing.T) {
	for name, content := range map[string]*string{
		"missing profile file":   nil,
		"malformed profile file": new("[default\nsecret_key = " + secretInEnv + "\n"),
		"profile without key":    new("[default]\nsecret_id = " + secretInEnv + "\n"),
	} {
		t.Run(name, func(t *testing.T) {
			clearCredentialEnv(t)
			path := filepath.Join(t.TempDir(), "credentials")
			if content != nil {
				if err := os.WriteFile(path, []byte(*content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// Setting the file variable stops the SDK chain before the CVM
			// metadata server, which does not exist here.
			t.Setenv(common.EnvCredentialFile, path)

			cred, err := CredentialFromEnvironment()
			if err == nil || cred != nil {
				t.Fatalf("got %v, %v; want an error", cred, err)
			}
			msg := err.Error()
			for _, source := range []string{EnvSecretID, "TKE_ROLE_ARN", common.EnvCredentialFile, "CVM instance role"} {
				if !strings.Contains(msg, source) {
					t.Errorf("error %q does not name source %s", msg, source)
				}
			}
			if strings.Contains(msg, secretInEnv) {
				t.Errorf("error %q contains a secret", msg)
			}
		})
	}
}
