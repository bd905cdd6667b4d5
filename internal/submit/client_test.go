package submit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
)

const (
	testSecretID  = "AKIDomicsqTestKey"
	testSecretKey = "omicsq-test-secret-key"
	testRegion    = "ap-guangzhou"
	// serverMessage is what the fake API puts in Error.Message; a real server
	// may echo request inputs there, so it must never reach Error().
	serverMessage = "name " + marker + " rejected"
)

func testCredential() common.CredentialIface {
	return common.NewCredential(testSecretID, testSecretKey)
}

func endpointOf(srv *httptest.Server) string {
	return strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://")
}

func newTestClient(t *testing.T, endpoint string, timeout time.Duration) *Client {
	t.Helper()
	c, err := New(Config{Region: testRegion, Endpoint: endpoint, InsecureHTTP: true, Timeout: timeout, Credential: testCredential()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// seedRequest decodes a seed body with the package's own decoder.
func seedRequest(t *testing.T, name string) *RunApplicationRequest {
	t.Helper()
	req, err := DecodeRunApplication(readSeed(t, name), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// requestNamed is a valid request whose Name steers the fake servers below.
func requestNamed(name, description string) *RunApplicationRequest {
	return &RunApplicationRequest{ApplicationId: "app-1", Name: name, EnvironmentId: "env-1",
		Description: &description, InputBase64: new("e30K")}
}

// verifyTC3 recomputes the TC3-HMAC-SHA256 signature of a received request
// independently of the SDK, so the test fails if the SDK is misconfigured
// (wrong service, host or body hash) rather than trusting its output.
func verifyTC3(r *http.Request, body []byte, secretID, secretKey string) error {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "TC3-HMAC-SHA256 ")
	if !ok {
		return errors.New("authorization is not TC3-HMAC-SHA256")
	}
	parts := map[string]string{}
	for p := range strings.SplitSeq(rest, ", ") {
		k, v, _ := strings.Cut(p, "=")
		parts[k] = v
	}
	ts, err := strconv.ParseInt(r.Header.Get("X-TC-Timestamp"), 10, 64)
	if err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	date := time.Unix(ts, 0).UTC().Format("2006-01-02")
	scope := date + "/omics/tc3_request"
	if parts["Credential"] != secretID+"/"+scope {
		return fmt.Errorf("credential scope %q", parts["Credential"])
	}
	if parts["SignedHeaders"] != "content-type;host" {
		return fmt.Errorf("signed headers %q", parts["SignedHeaders"])
	}
	sha := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	canonical := "POST\n/\n\ncontent-type:" + r.Header.Get("Content-Type") + "\nhost:" + r.Host + "\n\ncontent-type;host\n" + sha(body)
	toSign := "TC3-HMAC-SHA256\n" + r.Header.Get("X-TC-Timestamp") + "\n" + scope + "\n" + sha([]byte(canonical))
	key := mac(mac(mac([]byte("TC3"+secretKey), date), "omics"), "tc3_request")
	if want := hex.EncodeToString(mac(key, toSign)); !hmac.Equal([]byte(parts["Signature"]), []byte(want)) {
		return errors.New("signature does not verify")
	}
	return nil
}

type capturedRequest struct {
	header http.Header
	host   string
	body   []byte
	sigErr error
}

func TestRunApplicationSendsSeedBodiesSigned(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		seed  string
		token string
	}{
		{"seed_singleton.json", ""},
		{"seed_batch.json", "sts-session-token"},
	} {
		t.Run(tc.seed, func(t *testing.T) {
			t.Parallel()
			got := make(chan capturedRequest, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				got <- capturedRequest{header: r.Header.Clone(), host: r.Host, body: body,
					sigErr: verifyTC3(r, body, testSecretID, testSecretKey)}
				io.WriteString(w, `{"Response":{"RunGroupId":"run-ashamed-turquoise-rooster-131773","RequestId":"2f867f15-a2a6-4d42-b6e0-6e06010782ac"}}`)
			}))
			t.Cleanup(srv.Close)
			cred := common.CredentialIface(common.NewCredential(testSecretID, testSecretKey))
			if tc.token != "" {
				cred = common.NewTokenCredential(testSecretID, testSecretKey, tc.token)
			}
			c, err := New(Config{Region: testRegion, Endpoint: endpointOf(srv), InsecureHTTP: true, Credential: cred})
			if err != nil {
				t.Fatal(err)
			}

			resp, err := c.RunApplication(t.Context(), seedRequest(t, tc.seed))
			if err != nil {
				t.Fatal(err)
			}
			if resp.RunGroupId != "run-ashamed-turquoise-rooster-131773" || resp.RequestId != "2f867f15-a2a6-4d42-b6e0-6e06010782ac" {
				t.Errorf("response %+v", resp)
			}
			req := <-got
			if sent, want := decodeMap(t, req.body), decodeMap(t, readSeed(t, tc.seed)); !jsonEqual(sent, want) {
				t.Errorf("sent body\n%s\nwant the seed\n%s", req.body, readSeed(t, tc.seed))
			}
			if req.sigErr != nil {
				t.Errorf("TC3 signature: %v", req.sigErr)
			}
			wantHeaders := map[string]string{
				"X-TC-Action":   "RunApplication",
				"X-TC-Version":  "2022-11-28",
				"X-TC-Region":   testRegion,
				"X-TC-Language": "en-US",
				"Content-Type":  "application/json",
				"X-TC-Token":    tc.token,
			}
			for k, want := range wantHeaders {
				if got := req.header.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			if !strings.HasPrefix(req.header.Get("Authorization"), "TC3-HMAC-SHA256 ") {
				t.Errorf("Authorization = %q", req.header.Get("Authorization"))
			}
			if !strings.Contains(req.header.Get("X-TC-RequestClient"), requestClient) {
				t.Errorf("X-TC-RequestClient = %q", req.header.Get("X-TC-RequestClient"))
			}
			if v := req.header.Get("X-Idempotency-Key"); v != "" {
				t.Errorf("X-Idempotency-Key = %q: POSTs could be replayed", v)
			}
			if req.host != endpointOf(srv) {
				t.Errorf("Host = %q, want %q", req.host, endpointOf(srv))
			}
		})
	}
}

func jsonEqual(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y) // encoding/json sorts map keys
}

// codeServer answers every call with the error whose Code is the request's
// Name, with HTTP status 500 when Description is "500", else 200.
func codeServer(t *testing.T, hits *atomic.Int64) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		var req struct{ Name, Description string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad test request", http.StatusBadRequest)
			return
		}
		status := http.StatusOK
		if req.Description == "500" {
			status = http.StatusInternalServerError
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"Response":{"Error":{"Code":%q,"Message":%q},"RequestId":%q}}`, req.Name, serverMessage, "req-"+req.Name)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// wantServerClass is written out code by code (not derived from the
// classifier) so a change of classification shows up as a test failure.
var wantServerClass = map[string]Class{
	"RequestLimitExceeded":                              ClassThrottled,
	"RequestLimitExceeded.GlobalRegionUinLimitExceeded": ClassThrottled,
	"RequestLimitExceeded.IPLimitExceeded":              ClassThrottled,
	"RequestLimitExceeded.UinLimitExceeded":             ClassThrottled,

	"ServiceUnavailable":   ClassTransient,
	"ResourceInsufficient": ClassTransient,
	"ResourceUnavailable":  ClassTransient,
	"ResourceInUse":        ClassTransient,

	"InternalError": ClassAmbiguous,

	"DryRunOperation":                                   ClassPermanent,
	"FailedOperation":                                   ClassSystemic, // a generic failure is not the sample's fault
	"FailedOperation.DuplicateTableHeader":              ClassPermanent,
	"FailedOperation.EmailCountLimitExceeded":           ClassPermanent,
	"FailedOperation.EmptyTableHeader":                  ClassPermanent,
	"FailedOperation.InvalidTableHeader":                ClassPermanent,
	"FailedOperation.InvalidTableLength":                ClassPermanent,
	"FailedOperation.RetryLimitExceeded":                ClassPermanent,
	"FailedOperation.StatusNotSupported":                ClassPermanent,
	"FailedOperation.TableDataTypeMismatch":             ClassPermanent,
	"FailedOperation.VersionNotReleased":                ClassPermanent,
	"InvalidParameter":                                  ClassPermanent,
	"InvalidParameterValue":                             ClassPermanent,
	"InvalidParameterValue.DuplicateName":               ClassPermanent,
	"InvalidParameterValue.EntrypointNotSet":            ClassPermanent,
	"InvalidParameterValue.EnvironmentNotAvailable":     ClassSystemic, // an outage: pause, never dead-letter
	"InvalidParameterValue.InvalidBase64Encode":         ClassPermanent,
	"InvalidParameterValue.InvalidCosKey":               ClassPermanent,
	"InvalidParameterValue.InvalidCsvFormat":            ClassPermanent,
	"InvalidParameterValue.InvalidDescription":          ClassPermanent,
	"InvalidParameterValue.InvalidEmailFormat":          ClassPermanent,
	"InvalidParameterValue.InvalidInputJsonFormat":      ClassPermanent,
	"InvalidParameterValue.InvalidInputPlaceholder":     ClassPermanent,
	"InvalidParameterValue.InvalidName":                 ClassPermanent,
	"InvalidParameterValue.InvalidRunOption":            ClassPermanent,
	"InvalidParameterValue.InvalidTimeoutMinutes":       ClassPermanent,
	"InvalidParameterValue.TableDataTypeLengthMismatch": ClassPermanent,
	"InvalidParameterValue.UnsupportedTableDataType":    ClassPermanent,
	"InvalidRequest":                                    ClassPermanent,
	"MissingParameter":                                  ClassPermanent,
	"RequestSizeLimitExceeded":                          ClassPermanent,
	"ResourceNotFound":                                  ClassPermanent,
	"ResourceNotFound.ApplicationNotExist":              ClassPermanent,
	"ResourceNotFound.ApplicationVersionNotExist":       ClassPermanent,
	"ResourceNotFound.CosBucketNotExist":                ClassPermanent,
	"ResourceNotFound.CosObjectNotExist":                ClassPermanent,
	"ResourceNotFound.EnvironmentNotExist":              ClassSystemic,
	"ResourceNotFound.ProjectNotExist":                  ClassPermanent,
	"ResourceNotFound.RunGroupNotExist":                 ClassPermanent,
	"ResourceNotFound.RunNotExist":                      ClassPermanent,
	"ResourceNotFound.TableNotExist":                    ClassPermanent,
	"ResourceNotFound.TableRowNotExist":                 ClassPermanent,
	"ResponseSizeLimitExceeded":                         ClassPermanent,
	"UnknownParameter":                                  ClassPermanent,

	"ActionOffline":                     ClassSystemic,
	"AuthFailure":                       ClassSystemic,
	"AuthFailure.InvalidAuthorization":  ClassSystemic,
	"AuthFailure.InvalidSecretId":       ClassSystemic,
	"AuthFailure.MFAFailure":            ClassSystemic,
	"AuthFailure.SecretIdNotFound":      ClassSystemic,
	"AuthFailure.SignatureExpire":       ClassSystemic,
	"AuthFailure.SignatureFailure":      ClassSystemic,
	"AuthFailure.TokenFailure":          ClassSystemic,
	"AuthFailure.UnauthorizedOperation": ClassSystemic,
	"InvalidAction":                     ClassSystemic,
	"IpInBlacklist":                     ClassSystemic,
	"IpNotInWhitelist":                  ClassSystemic,
	"LimitExceeded":                     ClassSystemic,
	"NoSuchProduct":                     ClassSystemic,
	"NoSuchVersion":                     ClassSystemic,
	"OperationDenied":                   ClassSystemic,
	"UnauthorizedOperation":             ClassSystemic,
	"UnsupportedOperation":              ClassSystemic,
	"UnsupportedProtocol":               ClassSystemic,
	"UnsupportedRegion":                 ClassSystemic,
}

// Codes outside KnownCodes: sub-codes of throttling, transient and
// ambiguous families follow their family (retrying is safe); sub-codes of a
// permanent family nobody reviewed, and anything else, are systemic (pause,
// never dead-letter on a guess).
var wantUnlistedClass = map[string]Class{
	"RequestLimitExceeded.SomethingNew":  ClassThrottled,
	"ResourceUnavailable.Maintenance":    ClassTransient,
	"InternalError.DbError":              ClassAmbiguous,
	"ResourceNotFound.VolumeNotExist":    ClassSystemic, // unknown sub-codes pause rather than dead-letter
	"InvalidParameterValue.SomethingNew": ClassSystemic,
	"UnauthorizedOperation.CamNoAuth":    ClassSystemic,
	"OperationDenied.AccountFrozen":      ClassSystemic,
	"LimitExceeded.RunGroupQuota":        ClassSystemic,
	"AuthFailures":                       ClassSystemic, // not the AuthFailure family
	"InvalidParameterValueX":             ClassSystemic, // not the InvalidParameterValue family
	"BrandNewCode":                       ClassSystemic,
}

func TestKnownCodesAllHaveAnExpectedClass(t *testing.T) {
	t.Parallel()
	var server []string
	for _, c := range KnownCodes() {
		if !strings.HasPrefix(c, "ClientError.") {
			server = append(server, c)
		}
	}
	var want []string
	for c := range wantServerClass {
		want = append(want, c)
	}
	slices.Sort(want)
	if !slices.Equal(server, want) {
		t.Errorf("server codes in KnownCodes()\n%v\ndiffer from the expectation table\n%v", server, want)
	}
}

func TestServerErrorClassification(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := codeServer(t, &hits)
	c := newTestClient(t, endpointOf(srv), 5*time.Second)
	codes := make(map[string]Class, len(wantServerClass)+len(wantUnlistedClass))
	for k, v := range wantServerClass {
		codes[k] = v
	}
	for k, v := range wantUnlistedClass {
		codes[k] = v
	}
	for code, wantClass := range codes {
		for _, status := range []string{"200", "500"} {
			t.Run(code+"/"+status, func(t *testing.T) {
				t.Parallel()
				resp, err := c.RunApplication(t.Context(), requestNamed(code, status))
				if resp != nil {
					t.Errorf("got response %+v with an error answer", resp)
				}
				e, ok := errors.AsType[*Error](err)
				if !ok {
					t.Fatalf("error %v (%T), want *Error", err, err)
				}
				if e.Class != wantClass || e.Code != code || e.RequestID != "req-"+code || e.Action != "RunApplication" {
					t.Errorf("got class %v code %q request id %q action %q, want %v %q %q RunApplication",
						e.Class, e.Code, e.RequestID, e.Action, wantClass, code, "req-"+code)
				}
				if ClassOf(err) != wantClass {
					t.Errorf("ClassOf = %v, want %v", ClassOf(err), wantClass)
				}
				if want := code == "InvalidParameterValue.DuplicateName"; e.DuplicateName != want {
					t.Errorf("DuplicateName = %v, want %v", e.DuplicateName, want)
				}
				if e.Message != serverMessage {
					t.Errorf("Message = %q, want the server's message kept", e.Message)
				}
				if msg := err.Error(); strings.Contains(msg, marker) || !strings.Contains(msg, code) || !strings.Contains(msg, "req-"+code) {
					t.Errorf("Error() = %q: want code and request id, never the server message", msg)
				}
			})
		}
	}
}

func TestRateLimitIsNotRetried(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"RequestLimitExceeded", "RequestLimitExceeded.UinLimitExceeded", "InternalError"} {
		t.Run(code, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int64
			srv := codeServer(t, &hits)
			c := newTestClient(t, endpointOf(srv), 5*time.Second)
			if _, err := c.RunApplication(t.Context(), requestNamed(code, "200")); err == nil {
				t.Fatal("no error")
			}
			if n := hits.Load(); n != 1 {
				t.Errorf("server saw %d requests, want exactly 1", n)
			}
		})
	}
}

func TestLegacyErrorShape(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"code":4000,"message":"`+serverMessage+`","codeDesc":"InvalidParameter"}`)
	}))
	t.Cleanup(srv.Close)
	_, err := newTestClient(t, endpointOf(srv), 5*time.Second).RunApplication(t.Context(), requestNamed("n", ""))
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Class != ClassPermanent || e.Code != "InvalidParameter" {
		t.Errorf("got %v, want permanent InvalidParameter", err)
	}
}

// transportServer misbehaves according to the request's Name.
func transportServer(t *testing.T, hits *atomic.Int64, received chan<- struct{}) *httptest.Server {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		var req struct{ Name string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad test request", http.StatusBadRequest)
			return
		}
		// Block until the client gives up or the test ends; never forever.
		wait := func() {
			select {
			case <-r.Context().Done():
			case <-stop:
			case <-time.After(20 * time.Second):
			}
		}
		switch req.Name {
		case "hang":
			if received != nil {
				received <- struct{}{}
			}
			wait()
		case "reset":
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			if tcp, ok := conn.(*net.TCPConn); ok {
				tcp.SetLinger(0) // close with RST
			}
			conn.Close()
		case "stall-body":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, `{"Response":{"RunGroupId":`)
			w.(http.Flusher).Flush()
			wait()
		case "html-502":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html><body>502 Bad Gateway "+marker+"</body></html>")
		case "empty-503":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "json-500-without-error":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `{"Response":{"RequestId":"req-no-error","Detail":"`+marker+`"}}`)
		case "ok-without-rungroup":
			io.WriteString(w, `{"Response":{"RequestId":"req-no-rungroup"}}`)
		case "ok-rungroup-wrong-type":
			io.WriteString(w, `{"Response":{"RunGroupId":4711,"RequestId":"req-wrong-type"}}`)
		case "ok-null-response":
			io.WriteString(w, `{"Response":null}`)
		case "ok-garbage":
			io.WriteString(w, "garbage "+marker)
		default:
			io.WriteString(w, `{"Response":{"RunGroupId":"rg-`+req.Name+`","RequestId":"req-`+req.Name+`"}}`)
		}
	}))
	// Unblock handlers before Close waits for them.
	t.Cleanup(func() { close(stop); srv.Close() })
	return srv
}

func TestTransportFailureClassification(t *testing.T) {
	t.Parallel()
	const clientTimeout = 300 * time.Millisecond
	var hits atomic.Int64
	srv := transportServer(t, &hits, nil)
	c := newTestClient(t, endpointOf(srv), clientTimeout)

	cases := []struct {
		name          string
		wantClass     Class
		wantCode      string
		wantRequestID string
		wantDeadline  bool
	}{
		{"hang", ClassAmbiguous, "ClientError.NetworkError", "", true},
		{"reset", ClassAmbiguous, "ClientError.NetworkError", "", false},
		{"stall-body", ClassAmbiguous, "ClientError.ParseJsonError", "", false},
		{"html-502", ClassAmbiguous, "ClientError.ParseJsonError", "", false},
		{"empty-503", ClassAmbiguous, "ClientError.ParseJsonError", "", false},
		{"json-500-without-error", ClassAmbiguous, "ClientError.HttpStatusCodeError", "", false},
		{"ok-without-rungroup", ClassAmbiguous, CodeInvalidResponse, "req-no-rungroup", false},
		{"ok-rungroup-wrong-type", ClassAmbiguous, CodeInvalidResponse, "req-wrong-type", false},
		{"ok-null-response", ClassAmbiguous, CodeInvalidResponse, "", false},
		{"ok-garbage", ClassAmbiguous, "ClientError.ParseJsonError", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			resp, err := c.RunApplication(t.Context(), requestNamed(tc.name, ""))
			if elapsed := time.Since(start); elapsed > 10*clientTimeout {
				t.Errorf("call took %v with a %v timeout", elapsed, clientTimeout)
			}
			if resp != nil {
				t.Errorf("got response %+v", resp)
			}
			e, ok := errors.AsType[*Error](err)
			if !ok {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if e.Class != tc.wantClass || e.Code != tc.wantCode || e.RequestID != tc.wantRequestID {
				t.Errorf("got class %v code %q request id %q, want %v %q %q", e.Class, e.Code, e.RequestID, tc.wantClass, tc.wantCode, tc.wantRequestID)
			}
			if tc.wantDeadline && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
			}
			if strings.Contains(err.Error(), marker) {
				t.Errorf("Error() = %q echoes the response body", err.Error())
			}
		})
	}
	t.Run("sanity: the same server answers a normal call", func(t *testing.T) {
		t.Parallel()
		resp, err := c.RunApplication(t.Context(), requestNamed("fine", ""))
		if err != nil || resp.RunGroupId != "rg-fine" || resp.RequestId != "req-fine" {
			t.Errorf("got %+v, %v", resp, err)
		}
	})
}

func TestResetAfterWriteIsNotReplayed(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := transportServer(t, &hits, nil)
	c := newTestClient(t, endpointOf(srv), 5*time.Second)
	// Warm a keep-alive connection first: a broken reused connection is
	// where net/http would replay an idempotent request.
	if _, err := c.RunApplication(t.Context(), requestNamed("warm", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunApplication(t.Context(), requestNamed("reset", "")); ClassOf(err) != ClassAmbiguous {
		t.Fatalf("got %v, want ambiguous", err)
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2 (no replay)", n)
	}
}

func TestConnectionRefusedIsTransient(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = newTestClient(t, addr, 2*time.Second).RunApplication(t.Context(), requestNamed("n", ""))
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Class != ClassTransient || e.Code != "ClientError.NetworkError" || e.RequestID != "" {
		t.Fatalf("got %#v, want transient ClientError.NetworkError", err)
	}
	if op, ok := errors.AsType[*net.OpError](err); !ok || op.Op != "dial" {
		t.Errorf("cause %v is not a dial *net.OpError", err)
	}
}

func TestUntrustedCertificateIsSystemic(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err := New(Config{Region: testRegion, Endpoint: endpointOf(srv), Timeout: 2 * time.Second, Credential: testCredential()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RunApplication(t.Context(), requestNamed("n", ""))
	if ClassOf(err) != ClassSystemic {
		t.Errorf("got %v, want systemic", err)
	}
	if hits.Load() != 0 {
		t.Error("the request reached the handler")
	}
}

func TestContextHandling(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	received := make(chan struct{}, 1)
	srv := transportServer(t, &hits, received)
	c := newTestClient(t, endpointOf(srv), 30*time.Second)

	t.Run("cancel while waiting for the answer is ambiguous", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			_, err := c.RunApplication(ctx, requestNamed("hang", ""))
			errc <- err
		}()
		<-received
		cancel()
		err := <-errc
		if ClassOf(err) != ClassAmbiguous || !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want ambiguous wrapping context.Canceled", err)
		}
	})
	t.Run("a caller deadline shorter than the client timeout wins", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.RunApplication(ctx, requestNamed("hang", ""))
		<-received
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("call took %v", elapsed)
		}
		if ClassOf(err) != ClassAmbiguous || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want ambiguous wrapping context.DeadlineExceeded", err)
		}
	})
	t.Run("a context done before the call sends nothing", func(t *testing.T) {
		before := hits.Load()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := c.RunApplication(ctx, requestNamed("fine", ""))
		if ClassOf(err) != ClassTransient || !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want transient wrapping context.Canceled", err)
		}
		if hits.Load() != before {
			t.Error("a request was sent")
		}
	})
}

func TestClientIsSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := transportServer(t, &hits, nil)
	c := newTestClient(t, endpointOf(srv), 5*time.Second)
	const n = 24
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("run-%d", i)
			resp, err := c.RunApplication(t.Context(), requestNamed(name, ""))
			if err == nil && resp.RunGroupId != "rg-"+name {
				err = fmt.Errorf("call %d got run group %q", i, resp.RunGroupId)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Error(err)
	}
	if hits.Load() != n {
		t.Errorf("server saw %d requests, want %d", hits.Load(), n)
	}
}

func TestNilRequestIsPermanent(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, "127.0.0.1:1", time.Second)
	if _, err := c.RunApplication(t.Context(), nil); ClassOf(err) != ClassPermanent {
		t.Errorf("got %v, want permanent", err)
	}
	if _, err := c.FindRunGroupsByName(t.Context(), nil, "", nil); ClassOf(err) != ClassPermanent {
		t.Errorf("empty name: got %v, want permanent", err)
	}
}

// runGroupServer implements DescribeRunGroups over a fixed list, matching the
// Name filter by substring as a fuzzy server might.
type runGroupServer struct {
	groups    []RunGroup
	mu        sync.Mutex
	offsets   []uint64
	projectID []string
	limitBad  bool
	endless   bool
}

func (s *runGroupServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-TC-Action") != "DescribeRunGroups" {
		http.Error(w, "wrong action", http.StatusBadRequest)
		return
	}
	var req DescribeRunGroupsRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Limit == nil || req.Offset == nil ||
		len(req.Filters) != 1 || req.Filters[0].Name != "Name" || len(req.Filters[0].Values) != 1 {
		http.Error(w, "bad test request", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.offsets = append(s.offsets, *req.Offset)
	s.projectID = append(s.projectID, deref(req.ProjectId))
	if *req.Limit != 100 {
		s.limitBad = true
	}
	s.mu.Unlock()
	var match []RunGroup
	for _, g := range s.groups {
		if strings.Contains(g.Name, req.Filters[0].Values[0]) {
			match = append(match, g)
		}
	}
	total := uint64(len(match))
	page := match[min(*req.Offset, total):min(*req.Offset+*req.Limit, total)]
	if s.endless {
		total, page = 1<<40, match[:1]
	}
	json.NewEncoder(w).Encode(map[string]any{"Response": map[string]any{
		"TotalCount": total, "RunGroups": page, "RequestId": "req-describe"}})
}

func TestFindRunGroupsByNamePagesAndMatchesExactly(t *testing.T) {
	t.Parallel()
	fake := &runGroupServer{}
	var want []string
	for i := range 250 {
		name := fmt.Sprintf("target-%d", i) // fuzzy matches only
		if i%50 == 7 {
			name = "target"
			want = append(want, fmt.Sprintf("rg-%d", i))
		}
		fake.groups = append(fake.groups, RunGroup{RunGroupId: fmt.Sprintf("rg-%d", i), Name: name})
		fake.groups = append(fake.groups, RunGroup{RunGroupId: fmt.Sprintf("other-%d", i), Name: fmt.Sprintf("other-%d", i)})
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	c := newTestClient(t, endpointOf(srv), 5*time.Second)

	// Every page is one call and takes its own rate-limit token.
	tokens := 0
	groups, err := c.FindRunGroupsByName(t.Context(), new("prj-1"), "target", func(context.Context) error { tokens++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if tokens != 3 {
		t.Errorf("%d tokens taken for 3 pages", tokens)
	}
	var got []string
	for _, g := range groups {
		got = append(got, g.RunGroupId)
	}
	if !slices.Equal(got, want) {
		t.Errorf("found %v, want %v", got, want)
	}
	if !slices.Equal(fake.offsets, []uint64{0, 100, 200}) || fake.limitBad {
		t.Errorf("paged with offsets %v (bad limit %v), want 0, 100, 200 with limit 100", fake.offsets, fake.limitBad)
	}
	for _, p := range fake.projectID {
		if p != "prj-1" {
			t.Errorf("ProjectId %q, want prj-1 on every page", p)
		}
	}

	none, err := c.FindRunGroupsByName(t.Context(), nil, "absent", nil)
	if err != nil || len(none) != 0 {
		t.Errorf("absent name: got %v, %v", none, err)
	}

	// A token that cannot be had stops the lookup before the page is sent.
	sent := len(fake.offsets)
	_, err = c.FindRunGroupsByName(t.Context(), nil, "target", func(context.Context) error { return context.Canceled })
	if ClassOf(err) != ClassTransient || len(fake.offsets) != sent {
		t.Errorf("refused token: %v, %d pages sent", err, len(fake.offsets)-sent)
	}
}

func TestFindRunGroupsByNameStopsOnRunawayPaging(t *testing.T) {
	t.Parallel()
	fake := &runGroupServer{groups: []RunGroup{{RunGroupId: "rg-1", Name: "x"}}, endless: true}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	_, err := newTestClient(t, endpointOf(srv), 5*time.Second).FindRunGroupsByName(t.Context(), nil, "x", nil)
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Class != ClassAmbiguous || e.Code != CodeInvalidResponse {
		t.Errorf("got %v, want ambiguous %s", err, CodeInvalidResponse)
	}
	if len(fake.offsets) != maxDescribePages {
		t.Errorf("made %d calls, want %d", len(fake.offsets), maxDescribePages)
	}
}

func TestFindRunGroupsByNameReturnsClassifiedErrors(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"Response":{"Error":{"Code":"AuthFailure.SignatureExpire","Message":"m"},"RequestId":"req-x"}}`)
	}))
	t.Cleanup(srv.Close)
	_, err := newTestClient(t, endpointOf(srv), 5*time.Second).FindRunGroupsByName(t.Context(), nil, "x", nil)
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Class != ClassSystemic || e.Action != "DescribeRunGroups" || e.RequestID != "req-x" {
		t.Errorf("got %#v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	var nilCred *common.Credential
	cases := []struct {
		name string
		cfg  Config
	}{
		{"nil credential", Config{Region: testRegion}},
		{"typed nil credential", Config{Region: testRegion, Credential: nilCred}},
		{"empty secret key", Config{Region: testRegion, Credential: common.NewCredential(testSecretID, "")}},
		{"empty region", Config{Credential: testCredential()}},
		{"region with space", Config{Region: "ap guangzhou", Credential: testCredential()}},
		{"endpoint with scheme", Config{Region: testRegion, Endpoint: "http://127.0.0.1:8080", Credential: testCredential()}},
		{"endpoint with path", Config{Region: testRegion, Endpoint: "127.0.0.1:8080/omics", Credential: testCredential()}},
		{"endpoint with user", Config{Region: testRegion, Endpoint: "u@127.0.0.1:8080", Credential: testCredential()}},
		{"negative timeout", Config{Region: testRegion, Timeout: -time.Second, Credential: testCredential()}},
	}
	for _, tc := range cases {
		c, err := New(tc.cfg)
		if err == nil || c != nil {
			t.Errorf("%s: New = %v, %v; want an error", tc.name, c, err)
			continue
		}
		if strings.Contains(err.Error(), testSecretID) {
			t.Errorf("%s: error %q names the secret id", tc.name, err)
		}
	}
	c, err := New(Config{Region: testRegion, Credential: testCredential()})
	if err != nil {
		t.Fatal(err)
	}
	if c.timeout != DefaultTimeout {
		t.Errorf("timeout %v, want %v", c.timeout, DefaultTimeout)
	}
}

// Not parallel: it sets an SDK global, and parallel tests start only after
// the sequential ones have finished.
func TestNewRefusesSharedSDKHTTPClient(t *testing.T) {
	common.DefaultHttpClient = &http.Client{}
	defer func() { common.DefaultHttpClient = nil }()
	if _, err := New(Config{Region: testRegion, Credential: testCredential()}); err == nil {
		t.Error("New accepted a shared common.DefaultHttpClient")
	}
}

func TestClassifyDialPhaseErrors(t *testing.T) {
	t.Parallel()
	sdk := func(cause error) error {
		return tcerr.NewTencentCloudSDKErrorWithCause("ClientError.NetworkError", "Fail to get response", "", cause)
	}
	cases := []struct {
		name string
		err  error
		want Class
	}{
		{"DNS failure", sdk(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "omics.invalid", IsNotFound: true}}), ClassTransient},
		{"bare DNS error", sdk(&net.DNSError{Err: "server misbehaving", Name: "omics.invalid"}), ClassTransient},
		{"dial timeout", sdk(&net.OpError{Op: "dial", Net: "tcp", Err: context.DeadlineExceeded}), ClassTransient},
		{"read reset", sdk(&net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}), ClassAmbiguous},
		{"EOF", sdk(io.EOF), ClassAmbiguous},
		{"credential", tcerr.NewTencentCloudSDKError("ClientError.CredentialError", "m", ""), ClassSystemic},
		{"breaker", tcerr.NewTencentCloudSDKError("ClientError.CircuitBreakerError", "m", ""), ClassSystemic},
		{"local parameter", tcerr.NewTencentCloudSDKError("ClientError.InvalidParameter", "m", ""), ClassPermanent},
		{"io", tcerr.NewTencentCloudSDKError("ClientError.IOError", "m", ""), ClassAmbiguous},
		{"unknown client code", tcerr.NewTencentCloudSDKError("ClientError.Unheard", "m", ""), ClassSystemic},
		{"not an SDK error", errors.New("Content-Encoding not support: br"), ClassAmbiguous},
	}
	for _, tc := range cases {
		if got := classify("RunApplication", tc.err); got.Class != tc.want || got.Err != tc.err {
			t.Errorf("%s: class %v, want %v", tc.name, got.Class, tc.want)
		}
	}
}

func TestErrorAndClassOf(t *testing.T) {
	t.Parallel()
	e := &Error{Action: "RunApplication", Class: ClassPermanent, Code: "InvalidParameterValue.DuplicateName",
		Message: serverMessage, RequestID: "2f867f15", DuplicateName: true}
	if got, want := e.Error(), "omics RunApplication: InvalidParameterValue.DuplicateName (permanent, request id 2f867f15)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	cause := errors.New("cause")
	e2 := &Error{Action: "DescribeRunGroups", Class: ClassAmbiguous, Code: "ClientError.NetworkError", Err: cause}
	if got, want := e2.Error(), "omics DescribeRunGroups: ClientError.NetworkError (ambiguous)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(fmt.Errorf("wrapped: %w", e2), cause) {
		t.Error("Unwrap does not reach Err")
	}
	if got := ClassOf(fmt.Errorf("wrapped: %w", e)); got != ClassPermanent {
		t.Errorf("ClassOf(wrapped) = %v", got)
	}
	if got := ClassOf(errors.New("foreign")); got != ClassAmbiguous {
		t.Errorf("ClassOf(foreign) = %v, want ambiguous", got)
	}
	if got := ClassOf(nil); got != 0 || got.String() != "none" {
		t.Errorf("ClassOf(nil) = %v", got)
	}
	names := map[Class]string{ClassThrottled: "throttled", ClassTransient: "transient", ClassAmbiguous: "ambiguous",
		ClassPermanent: "permanent", ClassSystemic: "systemic", Class(99): "invalid"}
	for c, want := range names {
		if c.String() != want {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), c.String(), want)
		}
	}
}

func TestKnownCodesAndMetricCode(t *testing.T) {
	t.Parallel()
	codes := KnownCodes()
	if !slices.IsSorted(codes) || len(slices.Compact(slices.Clone(codes))) != len(codes) {
		t.Error("KnownCodes is not sorted and unique")
	}
	codes[0] = "mutated"
	if KnownCodes()[0] == "mutated" {
		t.Error("KnownCodes returns shared state")
	}
	for _, c := range []string{"InvalidParameterValue.DuplicateName", "RequestLimitExceeded.UinLimitExceeded",
		"ClientError.NetworkError", CodeInvalidResponse, "ServiceUnavailable"} {
		if !slices.Contains(KnownCodes(), c) {
			t.Errorf("KnownCodes lacks %s", c)
		}
	}
	cases := map[string]string{
		"":                                    "none",
		"InvalidParameterValue.DuplicateName": "InvalidParameterValue.DuplicateName",
		"ClientError.ParseJsonError":          "ClientError.ParseJsonError",
		"Brand.New":                           "other",
		marker:                                "other",
	}
	for in, want := range cases {
		if got := MetricCode(in); got != want {
			t.Errorf("MetricCode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLimitedBody(t *testing.T) {
	t.Parallel()
	read := func(body string, limit int64) error {
		b := &limitedBody{ReadCloser: io.NopCloser(strings.NewReader(body)), remaining: limit}
		_, err := io.ReadAll(b)
		return err
	}
	if err := read("0123456789", 10); err != nil {
		t.Errorf("body at the limit: %v", err)
	}
	if err := read("0123456789x", 10); !errors.Is(err, errResponseTooLarge) {
		t.Errorf("body over the limit: %v, want errResponseTooLarge", err)
	}
}
