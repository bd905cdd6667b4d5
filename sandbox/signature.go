package sandbox

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TC3-HMAC-SHA256 constants (omics-api.md §4.4; the SDK's
// sendWithSignatureV3).
const (
	tc3Algorithm     = "TC3-HMAC-SHA256"
	tc3Terminator    = "tc3_request"
	serviceName      = "omics"
	unsignedPayload  = "UNSIGNED-PAYLOAD"
	scopeDateLayout  = "2006-01-02"
	maxSignedHeaders = 16 // far more than any client signs; bounds work on hostile input
)

// credentials is the one key pair (plus optional STS token) the sandbox
// accepts at a time.
type credentials struct {
	secretID, secretKey, token string
}

// verifySignature checks the TC3-HMAC-SHA256 Authorization of an API call
// whose body is body, at server time now. It returns nil or the error the
// API answers. Checks run in the order the real API reports them: a
// malformed header, the timestamp, the secret id, the skew, the scope, the
// signature and finally the session token.
func verifySignature(r *http.Request, body []byte, cred credentials, now time.Time, maxSkew time.Duration) *apiError {
	auth, err := parseAuthorization(r.Header.Values("Authorization"))
	if err != nil {
		return err
	}
	tsText := r.Header.Get("X-TC-Timestamp")
	if tsText == "" {
		return errorf(codeMissingParameter, "the X-TC-Timestamp header is required")
	}
	ts, perr := strconv.ParseInt(tsText, 10, 64)
	// Bounded so that time.Unix and the skew arithmetic cannot overflow.
	if perr != nil || ts < 0 || ts > 1<<40 {
		return errorf(codeInvalidParameter, "X-TC-Timestamp must be a unix time in seconds")
	}
	if auth.secretID != cred.secretID {
		return errorf(codeSecretIDNotFound, "the SecretId is not found, please ensure that your SecretId is correct")
	}
	signedAt := time.Unix(ts, 0)
	if skew := now.Sub(signedAt); skew > maxSkew || skew < -maxSkew {
		return errorf(codeSignatureExpire, "the signature expired: X-TC-Timestamp is more than %s away from the server time", maxSkew)
	}
	if auth.date != signedAt.UTC().Format(scopeDateLayout) {
		return errorf(codeSignatureFailure, "the credential scope date is not the UTC date of X-TC-Timestamp")
	}
	payloadHash := sha256Hex(body)
	if r.Header.Get("X-TC-Content-SHA256") == unsignedPayload {
		payloadHash = sha256Hex([]byte(unsignedPayload))
	}
	want := tc3Signature(cred.secretKey, auth.date, tsText,
		canonicalRequest(r.Method, auth.signedHeaders, headerValues(r, auth.signedHeaders), payloadHash))
	// Constant time, so response timing reveals nothing about the expected
	// signature.
	if !hmac.Equal([]byte(want), []byte(auth.signature)) {
		return errorf(codeSignatureFailure, "the request signature we calculated does not match the signature you provided")
	}
	if cred.token != "" && !hmac.Equal([]byte(r.Header.Get("X-TC-Token")), []byte(cred.token)) {
		return errorf(codeTokenFailure, "the X-TC-Token session token is missing or invalid")
	}
	return nil
}

// authorization is a parsed TC3 Authorization header.
type authorization struct {
	secretID, date string
	signedHeaders  []string
	signature      string
}

// parseAuthorization parses
// "TC3-HMAC-SHA256 Credential=<id>/<date>/omics/tc3_request, SignedHeaders=a;b, Signature=<hex>".
func parseAuthorization(values []string) (authorization, *apiError) {
	var a authorization
	bad := func(why string) (authorization, *apiError) {
		return authorization{}, errorf(codeInvalidAuthorization, "the Authorization header is invalid: %s", why)
	}
	if len(values) != 1 {
		return bad("exactly one Authorization header is required")
	}
	alg, rest, ok := strings.Cut(values[0], " ")
	if !ok || alg != tc3Algorithm {
		return bad("the algorithm must be " + tc3Algorithm)
	}
	var credential, signedHeaders string
	var seen [3]bool
	for part := range strings.SplitSeq(rest, ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return bad("expected Key=Value parts separated by commas")
		}
		var i int
		switch key {
		case "Credential":
			i, credential = 0, value
		case "SignedHeaders":
			i, signedHeaders = 1, value
		case "Signature":
			i, a.signature = 2, value
		default:
			return bad("unexpected part")
		}
		if seen[i] {
			return bad("a part is repeated")
		}
		seen[i] = true
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return bad("Credential, SignedHeaders and Signature are required")
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 4 || scope[0] == "" || scope[3] != tc3Terminator {
		return bad("Credential must be SecretId/date/service/tc3_request")
	}
	if scope[2] != serviceName {
		return bad("the credential scope service must be " + serviceName)
	}
	if _, err := time.Parse(scopeDateLayout, scope[1]); err != nil {
		return bad("the credential scope date must be YYYY-MM-DD")
	}
	a.secretID, a.date = scope[0], scope[1]
	a.signedHeaders = strings.Split(signedHeaders, ";")
	if len(a.signedHeaders) > maxSignedHeaders {
		return bad("too many signed headers")
	}
	// The canonical form lists lowercase names in ascending order, each once.
	for i, h := range a.signedHeaders {
		if h == "" || h != strings.ToLower(h) {
			return bad("SignedHeaders must be lowercase header names")
		}
		if i > 0 && a.signedHeaders[i-1] >= h {
			return bad("SignedHeaders must be sorted and unique")
		}
	}
	if !slices.Contains(a.signedHeaders, "content-type") || !slices.Contains(a.signedHeaders, "host") {
		return bad("SignedHeaders must include content-type and host")
	}
	return a, nil
}

// headerValues returns the canonical value of each signed header: trimmed
// and lowercased, as the TC3 specification prescribes. Go's server moves
// the Host header into r.Host.
func headerValues(r *http.Request, names []string) []string {
	values := make([]string, len(names))
	for i, name := range names {
		v := r.Host
		if name != "host" {
			v = r.Header.Get(name)
		}
		values[i] = strings.ToLower(strings.TrimSpace(v))
	}
	return values
}

// canonicalRequest builds the TC3 canonical request of a POST: the
// canonical URI is always "/" and the canonical query string empty, as the
// SDK signs them whatever the endpoint path.
func canonicalRequest(method string, names, values []string, payloadHash string) string {
	var b strings.Builder
	b.Grow(256)
	b.WriteString(method)
	b.WriteString("\n/\n\n")
	for i, name := range names {
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(values[i])
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(names, ";"))
	b.WriteByte('\n')
	b.WriteString(payloadHash)
	return b.String()
}

// tc3Signature signs a canonical request for the omics service with the
// key chain TC3+key → date → service → tc3_request.
func tc3Signature(secretKey, date, timestamp, canonical string) string {
	stringToSign := tc3Algorithm + "\n" + timestamp + "\n" + date + "/" + serviceName + "/" + tc3Terminator + "\n" +
		sha256Hex([]byte(canonical))
	key := hmacSHA256([]byte("TC3"+secretKey), date)
	key = hmacSHA256(key, serviceName)
	key = hmacSHA256(key, tc3Terminator)
	return hex.EncodeToString(hmacSHA256(key, stringToSign))
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
