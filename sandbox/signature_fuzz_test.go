package sandbox

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzVerifySignature: verification never panics, accepts a correctly
// signed body, never accepts a tampered body under that signature, and
// never accepts an arbitrary Authorization header that does not carry the
// right signature. Seed corpus: testdata/fuzz/FuzzVerifySignature.
func FuzzVerifySignature(f *testing.F) {
	f.Add([]byte(`{"Name":"x"}`), uint32(3), byte(1), "TC3-HMAC-SHA256 Credential=AKIDsandbox/2023-11-14/omics/tc3_request, SignedHeaders=content-type;host, Signature=00")
	now := time.Unix(1_700_000_000, 0)
	cred := credentials{secretID: DefaultSecretID, secretKey: DefaultSecretKey}

	f.Fuzz(func(t *testing.T, body []byte, pos uint32, flip byte, auth string) {
		req := httptest.NewRequest("POST", "http://omics.tencentcloudapi.com/", nil)
		signRequest(req, body, actionRunApplication, APIVersion, testRegion, cred.secretID, cred.secretKey, now)
		valid := req.Header.Get("Authorization")
		signature := valid[strings.LastIndex(valid, "=")+1:]

		if e := verifySignature(req, body, cred, now, DefaultMaxSkew); e != nil {
			t.Fatalf("correctly signed body rejected: %+v", e)
		}
		tampered := [][]byte{append(bytes.Clone(body), ' '), append([]byte(" "), body...)}
		if len(body) > 0 {
			tampered = append(tampered, body[:len(body)-1])
			if flip != 0 {
				b := bytes.Clone(body)
				b[int(pos%uint32(len(b)))] ^= flip
				tampered = append(tampered, b)
			}
		}
		for _, b := range tampered {
			if e := verifySignature(req, b, cred, now, DefaultMaxSkew); e == nil {
				t.Fatalf("tampered body %q accepted under the signature of %q", b, body)
			} else if e.Code != codeSignatureFailure {
				t.Fatalf("tampered body: code %s, want %s", e.Code, codeSignatureFailure)
			}
		}

		req.Header.Set("Authorization", auth)
		if e := verifySignature(req, body, cred, now, DefaultMaxSkew); e == nil && !strings.Contains(auth, signature) {
			t.Fatalf("Authorization %q accepted without the valid signature", auth)
		}
	})
}
