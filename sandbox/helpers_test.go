package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
)

const testRegion = "ap-guangzhou"

// startSandbox serves a new Server for opts on a random loopback port until
// the test ends.
func startSandbox(t testing.TB, opts Options) (*Server, *Listener) {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := Listen(t.Context(), "127.0.0.1:0", s)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Listener.Close: %v", err)
		}
	})
	return s, l
}

// newClient returns the worker's API client for the sandbox at addr.
func newClient(t testing.TB, addr string, cred common.CredentialIface, timeout time.Duration) *submit.Client {
	t.Helper()
	c, err := submit.New(submit.Config{
		Region:       testRegion,
		Endpoint:     addr,
		InsecureHTTP: true,
		Timeout:      timeout,
		Credential:   cred,
	})
	if err != nil {
		t.Fatalf("submit.New: %v", err)
	}
	return c
}

func defaultCred() common.CredentialIface {
	return common.NewCredential(DefaultSecretID, DefaultSecretKey)
}

// sdkOptions tweak the raw SDK client of sdkCall.
type sdkOptions struct {
	region          string
	version         string
	unsignedPayload bool
}

// sdkCall sends body as action through the Tencent SDK's generic client
// (real TC3 signing) and returns the SDK's error, or nil and the response
// body.
func sdkCall(t testing.TB, addr string, cred common.CredentialIface, action string, body string, o sdkOptions) ([]byte, error) {
	t.Helper()
	if o.version == "" {
		o.version = APIVersion
	}
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = addr
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.ReqTimeout = 10
	cpf.UnsignedPayload = o.unsignedPayload
	cpf.Language = "en-US"
	client := common.NewCommonClient(cred, o.region, cpf)
	req := tchttp.NewCommonRequest("omics", o.version, action)
	if err := req.SetActionParameters(body); err != nil {
		t.Fatalf("SetActionParameters: %v", err)
	}
	resp := tchttp.NewCommonResponse()
	if err := client.Send(req, resp); err != nil {
		return nil, err
	}
	return resp.GetBody(), nil
}

// sdkCode returns the Tencent error code of an SDK error, or "" for nil.
func sdkCode(t testing.TB, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	e, ok := errors.AsType[*tcerr.TencentCloudSDKError](err)
	if !ok {
		t.Fatalf("error is not a TencentCloudSDKError: %v", err)
	}
	return e.Code
}

// rawRequest is an API call built and signed by the test, for bodies the
// SDK cannot express (unknown keys, wrong types, invalid UTF-8). The signer
// is the package's own; TestSignerMatchesSDK checks it against the SDK.
type rawRequest struct {
	action, version, region string
	body                    []byte
	secretID, secretKey     string
	timestamp               time.Time
}

func (rr rawRequest) build(t testing.TB, url string) *http.Request {
	t.Helper()
	if rr.action == "" {
		rr.action = actionRunApplication
	}
	if rr.version == "" {
		rr.version = APIVersion
	}
	if rr.region == "" {
		rr.region = testRegion
	}
	if rr.secretID == "" {
		rr.secretID, rr.secretKey = DefaultSecretID, DefaultSecretKey
	}
	if rr.timestamp.IsZero() {
		rr.timestamp = time.Now()
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(rr.body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	signRequest(req, rr.body, rr.action, rr.version, rr.region, rr.secretID, rr.secretKey, rr.timestamp)
	return req
}

// signRequest sets the headers the SDK sets and signs req like the SDK.
func signRequest(req *http.Request, body []byte, action, version, region, id, key string, ts time.Time) {
	tsText := strconv.FormatInt(ts.Unix(), 10)
	date := ts.UTC().Format(scopeDateLayout)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", version)
	req.Header.Set("X-TC-Region", region)
	req.Header.Set("X-TC-Timestamp", tsText)
	names := []string{"content-type", "host"}
	canonical := canonicalRequest(http.MethodPost, names, []string{"application/json", req.Host}, sha256Hex(body))
	req.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s/%s/%s/%s, SignedHeaders=content-type;host, Signature=%s",
		tc3Algorithm, id, date, serviceName, tc3Terminator, tc3Signature(key, date, tsText, canonical)))
}

// apiAnswer is a decoded API response envelope.
type apiAnswer struct {
	Response struct {
		Error *struct {
			Code    string
			Message string
		}
		RequestId  string
		RunGroupId string
	}
}

// send sends req and decodes the answer, failing the test on transport
// trouble or a non-200 status.
func send(t testing.TB, req *http.Request) apiAnswer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, b)
	}
	var a apiAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("decode answer %s: %v", b, err)
	}
	if a.Response.RequestId == "" {
		t.Fatalf("answer without RequestId: %s", b)
	}
	return a
}

func answerCode(a apiAnswer) string {
	if a.Response.Error == nil {
		return ""
	}
	return a.Response.Error.Code
}

// fakeClock is an injectable clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recordHandler is a slog.Handler that keeps every record's text and
// signals each one on a channel (if set), so tests can wait for the server
// to reach a point without sleeping.
type recordHandler struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	records chan slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	fmt.Fprintf(&h.buf, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&h.buf, " %s=%v", a.Key, a.Value)
		return true
	})
	h.buf.WriteByte('\n')
	h.mu.Unlock()
	if h.records != nil {
		h.records <- r.Clone()
	}
	return nil
}

func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}

// outcomeOf returns the outcome attribute of an "omics call" record.
func outcomeOf(r slog.Record) string {
	var out string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "outcome" {
			out = a.Value.String()
			return false
		}
		return true
	})
	return out
}

// runRequest returns a valid RunApplication request named name.
func runRequest(name string) *submit.RunApplicationRequest {
	return &submit.RunApplicationRequest{
		ApplicationId: "app-sweet-cerulean-frog-569111",
		Name:          name,
		EnvironmentId: "env-05d0g0w2",
		InputBase64:   new("e30K"),
	}
}

func newTestLogger(h slog.Handler) *slog.Logger { return slog.New(h) }
