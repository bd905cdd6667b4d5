package sandbox

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
)

// TestSDKSignatureAccepted: calls signed by the Tencent SDK (through the
// worker's client) are accepted and do what they say.
func TestSDKSignatureAccepted(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Rate: DefaultRate})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)

	resp, err := c.RunApplication(t.Context(), runRequest("accepted-1"))
	if err != nil {
		t.Fatalf("RunApplication: %v", err)
	}
	if resp.RequestId == "" {
		t.Errorf("RequestId is empty")
	}
	groups := s.RunGroups()
	if len(groups) != 1 || groups[0].RunGroupId != resp.RunGroupId || groups[0].Region != testRegion {
		t.Fatalf("RunGroups() = %+v, want one group %s in %s", groups, resp.RunGroupId, testRegion)
	}
	found, err := c.FindRunGroupsByName(t.Context(), nil, "accepted-1", nil)
	if err != nil {
		t.Fatalf("FindRunGroupsByName: %v", err)
	}
	if len(found) != 1 || found[0].RunGroupId != resp.RunGroupId {
		t.Errorf("FindRunGroupsByName = %+v, want %s", found, resp.RunGroupId)
	}
}

// TestUnsignedPayloadAccepted: X-TC-Content-SHA256: UNSIGNED-PAYLOAD, as the
// SDK sends it with ClientProfile.UnsignedPayload.
func TestUnsignedPayloadAccepted(t *testing.T) {
	t.Parallel()
	_, l := startSandbox(t, Options{})
	body, err := sdkCall(t, l.Addr(), defaultCred(), actionDescribeRunGroups, `{}`,
		sdkOptions{region: testRegion, unsignedPayload: true})
	if err != nil {
		t.Fatalf("unsigned payload call: %v", err)
	}
	if !bytes.Contains(body, []byte(`"TotalCount":0`)) {
		t.Errorf("body = %s, want TotalCount 0", body)
	}
}

// TestAuthFailures: each way a signature can be wrong gets its code, and
// nothing is created.
func TestAuthFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     Options
		cred     common.CredentialIface
		wantCode string
	}{
		{"wrong key", Options{}, common.NewCredential(DefaultSecretID, "not-the-key"), codeSignatureFailure},
		{"unknown secret id", Options{}, common.NewCredential("AKIDunknown", DefaultSecretKey), codeSecretIDNotFound},
		{"server clock 6 min ahead", Options{Now: func() time.Time { return time.Now().Add(6 * time.Minute) }}, defaultCred(), codeSignatureExpire},
		{"server clock 6 min behind", Options{Now: func() time.Time { return time.Now().Add(-6 * time.Minute) }}, defaultCred(), codeSignatureExpire},
		{"server clock 4 min ahead", Options{Now: func() time.Time { return time.Now().Add(4 * time.Minute) }}, defaultCred(), ""},
		{"tighter MaxSkew", Options{MaxSkew: time.Minute, Now: func() time.Time { return time.Now().Add(2 * time.Minute) }}, defaultCred(), codeSignatureExpire},
		{"token required, none sent", Options{Token: "sts-token"}, defaultCred(), codeTokenFailure},
		{"token required, wrong one", Options{Token: "sts-token"}, common.NewTokenCredential(DefaultSecretID, DefaultSecretKey, "other"), codeTokenFailure},
		{"token required and sent", Options{Token: "sts-token"}, common.NewTokenCredential(DefaultSecretID, DefaultSecretKey, "sts-token"), ""},
		{"custom credentials", Options{SecretID: "AKIDcustom", SecretKey: "k2"}, common.NewCredential("AKIDcustom", "k2"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, l := startSandbox(t, tt.opts)
			_, err := sdkCall(t, l.Addr(), tt.cred, actionRunApplication, `{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K"}`,
				sdkOptions{region: testRegion})
			if got := sdkCode(t, err); got != tt.wantCode {
				t.Fatalf("code = %q, want %q (err %v)", got, tt.wantCode, err)
			}
			wantGroups := 0
			if tt.wantCode == "" {
				wantGroups = 1
			}
			if n := len(s.RunGroups()); n != wantGroups {
				t.Errorf("%d run groups, want %d", n, wantGroups)
			}
		})
	}
}

// TestMalformedAuthorization: headers the parser must refuse.
func TestMalformedAuthorization(t *testing.T) {
	t.Parallel()
	_, l := startSandbox(t, Options{})
	url := "http://" + l.Addr() + "/"
	body := []byte(`{}`)
	ts := time.Now() // one timestamp, so the valid header stays valid for every rebuilt request
	valid := rawRequest{action: actionDescribeRunGroups, body: body, timestamp: ts}.build(t, url).Header.Get("Authorization")
	sigAt := strings.Index(valid, "Signature=") + len("Signature=")
	tests := []struct {
		name, auth, want string
	}{
		{"missing", "", codeInvalidAuthorization},
		{"other algorithm", strings.Replace(valid, "TC3-HMAC-SHA256", "HMAC-SHA1", 1), codeInvalidAuthorization},
		{"other service", strings.Replace(valid, "/omics/", "/cvm/", 1), codeInvalidAuthorization},
		{"no terminator", strings.Replace(valid, "/tc3_request", "/x", 1), codeInvalidAuthorization},
		{"host not signed", strings.Replace(valid, "SignedHeaders=content-type;host", "SignedHeaders=content-type", 1), codeInvalidAuthorization},
		{"unsorted headers", strings.Replace(valid, "SignedHeaders=content-type;host", "SignedHeaders=host;content-type", 1), codeInvalidAuthorization},
		{"no signature", valid[:strings.Index(valid, ", Signature=")], codeInvalidAuthorization},
		{"repeated part", valid + ", Signature=00", codeInvalidAuthorization},
		{"bad scope date", strings.Replace(valid, "/"+ts.UTC().Format(scopeDateLayout)+"/", "/2024-13-45/", 1), codeInvalidAuthorization},
		{"other scope date", strings.Replace(valid, "/"+ts.UTC().Format(scopeDateLayout)+"/", "/2001-01-01/", 1), codeSignatureFailure},
		{"signature upper case", valid[:sigAt] + strings.ToUpper(valid[sigAt:]), codeSignatureFailure},
		{"valid", valid, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := rawRequest{action: actionDescribeRunGroups, body: body, timestamp: ts}.build(t, url)
			req.Header.Set("Authorization", tt.auth)
			if got := answerCode(send(t, req)); got != tt.want {
				t.Errorf("code = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestSignedHeadersBeyondMinimum: a client may sign more headers than
// content-type and host; their canonical values are trimmed and lowercased.
func TestSignedHeadersBeyondMinimum(t *testing.T) {
	t.Parallel()
	_, l := startSandbox(t, Options{})
	body := []byte(`{}`)
	ts := time.Now()
	build := func(language string) *http.Request {
		req, err := http.NewRequest(http.MethodPost, "http://"+l.Addr()+"/", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		signRequest(req, body, actionDescribeRunGroups, APIVersion, testRegion, DefaultSecretID, DefaultSecretKey, ts)
		date := ts.UTC().Format(scopeDateLayout)
		canonical := canonicalRequest(http.MethodPost, []string{"content-type", "host", "x-tc-language"},
			[]string{"application/json", req.Host, "en-us"}, sha256Hex(body))
		req.Header.Set("Authorization", tc3Algorithm+" Credential="+DefaultSecretID+"/"+date+
			"/omics/tc3_request, SignedHeaders=content-type;host;x-tc-language, Signature="+
			tc3Signature(DefaultSecretKey, date, strconv.FormatInt(ts.Unix(), 10), canonical))
		req.Header.Set("X-TC-Language", language)
		return req
	}
	if got := answerCode(send(t, build(" EN-US "))); got != "" {
		t.Fatalf("code = %q, want success", got)
	}
	if got := answerCode(send(t, build("zh-CN"))); got != codeSignatureFailure {
		t.Errorf("changed signed header: code = %q, want %q", got, codeSignatureFailure)
	}
}

// TestSignerMatchesSDK pins the test signer (and so the verifier's
// canonical form) to what the Tencent SDK actually sends.
func TestSignerMatchesSDK(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		captured *http.Request
		body     []byte
	)
	capture := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		captured, body = r, b
		mu.Unlock()
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(`{"Response":{"RequestId":"r"}}`)), Request: r}, nil
	})
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = "127.0.0.1:9"
	cpf.HttpProfile.Scheme = "HTTP"
	client := common.NewCommonClient(common.NewCredential("AKIDx", "key-x"), testRegion, cpf).WithHttpTransport(capture)
	req := tchttp.NewCommonRequest("omics", APIVersion, actionRunApplication)
	if err := req.SetActionParameters(`{"Name":"x","ApplicationId":"app-1"}`); err != nil {
		t.Fatal(err)
	}
	if err := client.Send(req, tchttp.NewCommonResponse()); err != nil {
		t.Fatalf("Send: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	ts := captured.Header.Get("X-TC-Timestamp")
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		t.Fatalf("SDK timestamp %q: %v", ts, err)
	}
	ours, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:9/", bytes.NewReader(body))
	signRequest(ours, body, actionRunApplication, APIVersion, testRegion, "AKIDx", "key-x", time.Unix(unix, 0))
	if got, want := ours.Header.Get("Authorization"), captured.Header.Get("Authorization"); got != want {
		t.Errorf("test signer Authorization\n got %s\nwant %s (SDK)", got, want)
	}
	// And the verifier accepts the SDK's request as captured.
	captured.Host = "127.0.0.1:9"
	if e := verifySignature(captured, body, credentials{secretID: "AKIDx", secretKey: "key-x"}, time.Unix(unix, 0), DefaultMaxSkew); e != nil {
		t.Errorf("verifySignature(SDK request) = %+v, want nil", e)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestProtocolErrors: method, version, action, region, size and content
// type.
func TestProtocolErrors(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{})
	addr := l.Addr()
	url := "http://" + addr + "/"

	t.Run("GET", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if got := answerCode(send(t, req)); got != codeUnsupportedProtocol {
			t.Errorf("code = %q, want %q", got, codeUnsupportedProtocol)
		}
	})
	t.Run("SDK wrong version", func(t *testing.T) {
		_, err := sdkCall(t, addr, defaultCred(), actionDescribeRunGroups, `{}`, sdkOptions{region: testRegion, version: "2021-01-01"})
		if got := sdkCode(t, err); got != codeNoSuchVersion {
			t.Errorf("code = %q, want %q", got, codeNoSuchVersion)
		}
	})
	t.Run("SDK unknown action", func(t *testing.T) {
		_, err := sdkCall(t, addr, defaultCred(), "RunWorkflow", `{}`, sdkOptions{region: testRegion})
		if got := sdkCode(t, err); got != codeInvalidAction {
			t.Errorf("code = %q, want %q", got, codeInvalidAction)
		}
	})
	t.Run("SDK without region", func(t *testing.T) {
		_, err := sdkCall(t, addr, defaultCred(), actionDescribeRunGroups, `{}`, sdkOptions{})
		if got := sdkCode(t, err); got != codeMissingParameter {
			t.Errorf("code = %q, want %q", got, codeMissingParameter)
		}
	})
	t.Run("malformed region", func(t *testing.T) {
		req := rawRequest{action: actionDescribeRunGroups, region: "AP Guangzhou", body: []byte(`{}`)}.build(t, url)
		if got := answerCode(send(t, req)); got != codeUnsupportedRegion {
			t.Errorf("code = %q, want %q", got, codeUnsupportedRegion)
		}
	})
	t.Run("missing version header", func(t *testing.T) {
		req := rawRequest{body: []byte(`{}`)}.build(t, url)
		req.Header.Del("X-TC-Version")
		if got := answerCode(send(t, req)); got != codeMissingParameter {
			t.Errorf("code = %q, want %q", got, codeMissingParameter)
		}
	})
	t.Run("form content type", func(t *testing.T) {
		req := rawRequest{body: []byte(`{}`)}.build(t, url)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if got := answerCode(send(t, req)); got != codeUnsupportedProtocol {
			t.Errorf("code = %q, want %q", got, codeUnsupportedProtocol)
		}
	})
	t.Run("body over 10 MB", func(t *testing.T) {
		big := make([]byte, MaxBodyBytes+1)
		req := rawRequest{body: big}.build(t, url)
		if got := answerCode(send(t, req)); got != codeRequestSizeLimitExceeded {
			t.Errorf("code = %q, want %q", got, codeRequestSizeLimitExceeded)
		}
		// Chunked (no Content-Length): the limit applies while reading.
		req = rawRequest{body: big}.build(t, url)
		req.Body = io.NopCloser(bytes.NewReader(big))
		req.ContentLength = -1
		if got := answerCode(send(t, req)); got != codeRequestSizeLimitExceeded {
			t.Errorf("chunked: code = %q, want %q", got, codeRequestSizeLimitExceeded)
		}
	})
	t.Run("statistics", func(t *testing.T) {
		st := s.Stats()
		other := st.Actions[actionOther]
		if other.Calls[codeInvalidAction] != 1 || other.Calls[codeUnsupportedProtocol] != 1 {
			t.Errorf("_other calls = %v, want InvalidAction and UnsupportedProtocol once", other.Calls)
		}
		if st.RunGroupsCreated != 0 {
			t.Errorf("RunGroupsCreated = %d, want 0", st.RunGroupsCreated)
		}
	})
}

// TestCredentialRotationAndForcedErrors: SetCredentials and ForceError, as
// the worker's fleet-wide pause tests use them.
func TestCredentialRotationAndForcedErrors(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{})
	oldClient := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	if _, err := oldClient.RunApplication(t.Context(), runRequest("before-rotation")); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	if err := s.SetCredentials("AKIDrotated", "new-key"); err != nil {
		t.Fatal(err)
	}
	_, err := oldClient.RunApplication(t.Context(), runRequest("after-rotation"))
	if e, ok := err.(*submit.Error); !ok || e.Code != codeSecretIDNotFound || e.Class != submit.ClassSystemic {
		t.Errorf("old credential after rotation: err = %v, want %s (systemic)", err, codeSecretIDNotFound)
	}
	newClient := newClient(t, l.Addr(), common.NewCredential("AKIDrotated", "new-key"), 5*time.Second)
	if _, err := newClient.RunApplication(t.Context(), runRequest("after-rotation")); err != nil {
		t.Errorf("new credential: %v", err)
	}
	if err := s.SetCredentials("AKIDrotated", "newer-key"); err != nil {
		t.Fatal(err)
	}
	_, err = newClient.RunApplication(t.Context(), runRequest("after-key-change"))
	if e, ok := err.(*submit.Error); !ok || e.Code != codeSignatureFailure {
		t.Errorf("same id, old key: err = %v, want %s", err, codeSignatureFailure)
	}
	if err := s.SetCredentials("", "x"); err == nil {
		t.Errorf("SetCredentials with empty id: nil error")
	}

	if err := s.SetCredentials(DefaultSecretID, DefaultSecretKey); err != nil {
		t.Fatal(err)
	}
	s.ForceError("LimitExceeded")
	for i := range 3 {
		_, err := oldClient.RunApplication(t.Context(), runRequest("forced"))
		if e, ok := err.(*submit.Error); !ok || e.Code != "LimitExceeded" || e.Class != submit.ClassSystemic {
			t.Fatalf("forced call %d: err = %v, want LimitExceeded (systemic)", i, err)
		}
	}
	s.ForceError("")
	if _, err := oldClient.RunApplication(t.Context(), runRequest("forced")); err != nil {
		t.Errorf("after ForceError(\"\"): %v", err)
	}
	st := s.Stats()
	if st.ForcedErrors != 3 || st.Actions[actionRunApplication].Calls["LimitExceeded"] != 3 {
		t.Errorf("ForcedErrors = %d, calls = %v; want 3 LimitExceeded", st.ForcedErrors, st.Actions[actionRunApplication].Calls)
	}
	if st.RunGroupsCreated != 3 {
		t.Errorf("RunGroupsCreated = %d, want 3", st.RunGroupsCreated)
	}
}
