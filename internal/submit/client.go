package submit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
)

const (
	service    = "omics"
	apiVersion = "2022-11-28"

	// DefaultEndpoint is the API host used when Config.Endpoint is empty.
	DefaultEndpoint = "omics.tencentcloudapi.com"
	// DefaultTimeout bounds one call when Config.Timeout is zero.
	DefaultTimeout = 30 * time.Second

	// maxResponseBytes bounds a response body: the SDK reads bodies whole,
	// so an endless or huge answer would otherwise exhaust memory. A full
	// DescribeRunGroups page of 100 groups with large inputs stays below it.
	maxResponseBytes = 64 << 20
	// describePageSize is DescribeRunGroups' maximum Limit.
	describePageSize = 100
	// maxDescribePages stops FindRunGroupsByName on a server whose
	// TotalCount keeps growing or never converges.
	maxDescribePages = 100
	// requestClient is appended to the SDK's X-TC-RequestClient header so
	// server-side logs can tell this worker's calls apart.
	requestClient = "omicsq"
)

// Config configures a Client.
type Config struct {
	// Region is the API region, e.g. "ap-guangzhou" (required).
	Region string
	// Endpoint is the API host as host[:port], without scheme or path.
	// Default DefaultEndpoint.
	Endpoint string
	// InsecureHTTP selects plain http instead of https; for the sandbox API
	// only.
	InsecureHTTP bool
	// Timeout bounds each call (connect, send, headers and body). A shorter
	// deadline on the call's context wins. Default DefaultTimeout.
	Timeout time.Duration
	// Credential signs the calls (required). See CredentialFromEnvironment.
	Credential common.CredentialIface
}

// Client calls the Omics API. It is safe for concurrent use by multiple
// goroutines. It never retries: every failure comes back as an *Error for
// the caller's retry policy.
type Client struct {
	sdk     *common.Client
	timeout time.Duration
}

// New returns a Client for cfg. It performs no I/O. The SDK is configured
// with its retries, region breaker and debug dump off (the dump would log
// the Authorization header and request bodies), English error messages, and
// no replay of POSTs on broken connections.
func New(cfg Config) (*Client, error) {
	if cfg.Region == "" {
		return nil, errors.New("submit: region is required")
	}
	if strings.ContainsFunc(cfg.Region, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-')
	}) {
		return nil, errors.New("submit: region must be lowercase letters, digits and dashes")
	}
	if err := checkCredential(cfg.Credential); err != nil {
		return nil, err
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	if u, err := url.Parse("//" + endpoint); err != nil || u.Host != endpoint || u.User != nil {
		return nil, errors.New("submit: endpoint must be host[:port] without scheme or path")
	}
	timeout := cfg.Timeout
	switch {
	case timeout < 0:
		return nil, errors.New("submit: timeout must not be negative")
	case timeout == 0:
		timeout = DefaultTimeout
	}
	// The SDK applies its profile to common.DefaultHttpClient when that
	// global is set; refuse rather than change a client others share.
	if common.DefaultHttpClient != nil {
		return nil, errors.New("submit: common.DefaultHttpClient is set; it would be modified")
	}

	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = endpoint
	cpf.HttpProfile.ReqMethod = http.MethodPost
	cpf.HttpProfile.Scheme = "HTTPS"
	if cfg.InsecureHTTP {
		cpf.HttpProfile.Scheme = "HTTP"
	}
	// No http.Client timeout: each call's context carries it, which also
	// makes a caller's shorter deadline effective.
	cpf.HttpProfile.ReqTimeout = 0
	cpf.SignMethod = "TC3-HMAC-SHA256"
	cpf.Language = "en-US"
	cpf.Debug = false
	cpf.DisableRegionBreaker = true // it would redirect calls to another endpoint
	cpf.NetworkFailureMaxRetries = 0
	cpf.RateLimitExceededMaxRetries = 0
	cpf.UnsafeRetryOnConnectionFailure = false

	sdk := common.NewCommonClient(cfg.Credential, cfg.Region, cpf).
		WithHttpTransport(newTransport()).
		WithRequestClient(requestClient)
	return &Client{sdk: sdk, timeout: timeout}, nil
}

// checkCredential rejects what would make the SDK panic or sign with empty
// keys, without calling GetCredential (which may refresh over the network).
func checkCredential(cred common.CredentialIface) error {
	if cred == nil {
		return errors.New("submit: credential is required")
	}
	if v := reflect.ValueOf(cred); v.Kind() == reflect.Pointer && v.IsNil() {
		return errors.New("submit: credential is a nil pointer")
	}
	if c, ok := cred.(*common.Credential); ok && (c.SecretId == "" || c.SecretKey == "") {
		return errors.New("submit: credential has an empty secret id or secret key")
	}
	return nil
}

func newTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.IdleConnTimeout = 30 * time.Second
	t.MaxIdleConnsPerHost = 32 // the API allows 20 calls/s; keep connections warm
	return &limitedBodyTransport{next: t, max: maxResponseBytes}
}

// RunApplication submits req. The request is sent as given; validate it
// first (DecodeRunApplication or Validate). On success the response holds
// the new RunGroupId. Every error is an *Error; a DuplicateName error means
// a run group with req.Name exists already (see FindRunGroupsByName).
//
// RunApplication has no idempotency token: after a ClassAmbiguous error the
// run group may exist, so reconcile by name before calling again.
func (c *Client) RunApplication(ctx context.Context, req *RunApplicationRequest) (*RunApplicationResponse, error) {
	const action = "RunApplication"
	if req == nil {
		return nil, &Error{Action: action, Class: ClassPermanent, Code: codeClientInvalidParam, Message: "request is nil"}
	}
	var out RunApplicationResponse
	if err := c.call(ctx, action, req, &out); err != nil {
		return nil, err
	}
	if out.RunGroupId == "" {
		return nil, &Error{Action: action, Class: ClassAmbiguous, Code: CodeInvalidResponse,
			Message: "success response without RunGroupId", RequestID: out.RequestId}
	}
	return &out, nil
}

// ProbeRunApplication asks whether RunApplication itself is allowed again
// without creating anything: it sends a deliberately invalid request (no
// parameters), which an authorised caller gets refused with a parameter
// error, while an unauthorised one gets the systemic code. It returns nil
// when the answer proves authorisation, else the *Error.
func (c *Client) ProbeRunApplication(ctx context.Context) error {
	var out RunApplicationResponse
	err := c.call(ctx, "RunApplication", struct{}{}, &out)
	if err == nil {
		// Only a server that ignores required parameters can get here.
		return &Error{Action: "RunApplication", Class: ClassSystemic, Code: CodeInvalidResponse,
			Message: "an empty RunApplication request was accepted"}
	}
	// Judged by family, not class: an unreviewed sub-code of a parameter
	// family (classed systemic) still proves the call was authorised.
	if e, ok := errors.AsType[*Error](err); ok && !e.DuplicateName &&
		inFamily(e.Code, "MissingParameter", "InvalidParameter", "InvalidParameterValue", "UnknownParameter") {
		return nil
	}
	return err
}

// DescribeRunGroups lists run groups (one page). A nil req lists with the
// API's defaults. Every error is an *Error.
func (c *Client) DescribeRunGroups(ctx context.Context, req *DescribeRunGroupsRequest) (*DescribeRunGroupsResponse, error) {
	if req == nil {
		req = &DescribeRunGroupsRequest{}
	}
	var out DescribeRunGroupsResponse
	if err := c.call(ctx, "DescribeRunGroups", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// FindRunGroupsByName returns the run groups in projectID (nil: the
// region's default project) whose Name equals name exactly. It pages through
// DescribeRunGroups with a Name filter, 100 per page, and compares names
// itself because the server's filter may match fuzzily. An empty result
// right after a submission may only mean the new group is not visible yet.
// Every error is an *Error.
//
// beforePage, when not nil, is called before each page is requested (every
// page is one DescribeRunGroups call and takes its own rate-limit token);
// its error ends the lookup.
func (c *Client) FindRunGroupsByName(ctx context.Context, projectID *string, name string, beforePage func(context.Context) error) ([]RunGroup, error) {
	const action = "DescribeRunGroups"
	if name == "" {
		return nil, &Error{Action: action, Class: ClassPermanent, Code: codeClientInvalidParam, Message: "name is empty"}
	}
	var (
		found  []RunGroup
		seen   = make(map[string]bool)
		offset uint64
		limit  uint64 = describePageSize
	)
	for range maxDescribePages {
		if beforePage != nil {
			if err := beforePage(ctx); err != nil {
				return nil, &Error{Action: action, Class: ClassTransient, Code: codeNetworkError,
					Message: "lookup stopped before sending a page", Err: err}
			}
		}
		page, err := c.DescribeRunGroups(ctx, &DescribeRunGroupsRequest{
			ProjectId: projectID,
			Filters:   []Filter{{Name: "Name", Values: []string{name}}},
			Limit:     &limit,
			Offset:    new(offset),
		})
		if err != nil {
			return nil, err
		}
		for _, g := range page.RunGroups {
			// Offset paging can repeat a group when others are created
			// between pages.
			if g.Name == name && !seen[g.RunGroupId] {
				seen[g.RunGroupId] = true
				found = append(found, g)
			}
		}
		offset += uint64(len(page.RunGroups))
		if len(page.RunGroups) == 0 || offset >= page.TotalCount {
			return found, nil
		}
	}
	return nil, &Error{Action: action, Class: ClassAmbiguous, Code: CodeInvalidResponse,
		Message: fmt.Sprintf("paging did not finish within %d pages", maxDescribePages)}
}

// call sends one signed request and decodes the Response object into out.
func (c *Client) call(ctx context.Context, action string, params, out any) error {
	if err := ctx.Err(); err != nil {
		// Nothing was sent, so the request can safely be tried again later.
		return &Error{Action: action, Class: ClassTransient, Code: codeNetworkError,
			Message: "context done before sending", Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// A fresh SDK request per call: Send writes its parameters and domain.
	req := &apiRequest{BaseRequest: (&tchttp.BaseRequest{}).Init().WithApiInfo(service, apiVersion, action), params: params}
	req.SetContext(ctx)
	resp := &apiResponse{}
	if err := c.sdk.Send(req, resp); err != nil {
		return classify(action, err)
	}

	var envelope struct {
		Response json.RawMessage `json:"Response"`
	}
	if err := json.Unmarshal(resp.body, &envelope); err != nil || len(envelope.Response) == 0 || bytes.Equal(envelope.Response, []byte("null")) {
		return &Error{Action: action, Class: ClassAmbiguous, Code: CodeInvalidResponse,
			Message: "success response without a Response object", Err: err}
	}
	if err := json.Unmarshal(envelope.Response, out); err != nil {
		var id struct{ RequestId string }
		_ = json.Unmarshal(envelope.Response, &id) // best effort, for the support ticket
		return &Error{Action: action, Class: ClassAmbiguous, Code: CodeInvalidResponse,
			Message: "success response does not decode", RequestID: id.RequestId, Err: err}
	}
	return nil
}

// apiRequest is an SDK request whose body is params encoded by
// encoding/json. The SDK's own JSON fork would also work, but encoding/json
// is what DecodeRunApplication and the tests use, so the bytes on the wire
// follow the same rules as everything else in this package.
type apiRequest struct {
	*tchttp.BaseRequest
	params any
}

// MarshalJSON is called by the SDK to build the request body.
func (r *apiRequest) MarshalJSON() ([]byte, error) { return json.Marshal(r.params) }

// apiResponse captures the raw body of a success answer; the SDK has already
// turned error answers into errors by then.
type apiResponse struct {
	tchttp.BaseResponse
	body []byte
}

// UnmarshalJSON is called by the SDK with the whole response body.
func (r *apiResponse) UnmarshalJSON(b []byte) error {
	r.body = bytes.Clone(b)
	return nil
}

var errResponseTooLarge = fmt.Errorf("response body exceeds %d bytes", maxResponseBytes)

// limitedBodyTransport fails reading a response body beyond max bytes.
type limitedBodyTransport struct {
	next http.RoundTripper
	max  int64
}

func (t *limitedBodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, remaining: t.max}
	return resp, nil
}

type limitedBody struct {
	io.ReadCloser
	remaining int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.remaining <= 0 {
		// At the limit: the body is fine only if it ends here.
		var probe [1]byte
		n, err := b.ReadCloser.Read(probe[:])
		if n > 0 {
			return 0, errResponseTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.ReadCloser.Read(p)
	b.remaining -= int64(n)
	return n, err
}
