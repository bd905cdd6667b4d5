package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/omicsq/omicsq/client"
)

func get(t *testing.T, h http.Handler, method, path string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, rec.Result().Header, string(body)
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	h := NewHandler(reg, func() error { return errors.New("not connected to NATS") })
	code, header, body := get(t, h, http.MethodGet, "/healthz", nil)
	if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz while not ready = %d %q; want 200 \"ok\" (liveness ignores readiness)", code, body)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/healthz Content-Type = %q; want text/plain", ct)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	var notReady atomic.Pointer[error]
	reason := errors.New("consumer omicsq-worker not bound yet")
	notReady.Store(&reason)
	h := NewHandler(reg, func() error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	})

	code, header, body := get(t, h, http.MethodGet, "/readyz", nil)
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while not ready: status %d; want 503", code)
	}
	if strings.TrimSpace(body) != reason.Error() {
		t.Errorf("/readyz body = %q; want the reason %q", body, reason)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/readyz Content-Type = %q; want text/plain", ct)
	}

	notReady.Store(nil)
	code, _, body = get(t, h, http.MethodGet, "/readyz", nil)
	if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/readyz once ready = %d %q; want 200 \"ok\"", code, body)
	}
}

func TestReadyzNilFuncIsReady(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	if code, _, _ := get(t, NewHandler(reg, nil), http.MethodGet, "/readyz", nil); code != http.StatusOK {
		t.Errorf("/readyz with a nil ready func: %d; want 200", code)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	m.DeadLettered(client.ReasonNameConflict)
	h := NewHandler(reg, nil)

	code, _, body := get(t, h, http.MethodGet, "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d", code)
	}
	for _, want := range []string{
		`omicsq_build_info{goversion="go1.26.8",revision="abc123",version="1.2.3"} 1`,
		`omicsq_dead_letters_total{reason="name_conflict"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// OpenMetrics is negotiated when asked for (and ends with # EOF).
	code, header, body := get(t, h, http.MethodGet, "/metrics",
		http.Header{"Accept": {"application/openmetrics-text; version=1.0.0"}})
	if code != http.StatusOK || !strings.HasPrefix(header.Get("Content-Type"), "application/openmetrics-text") {
		t.Errorf("/metrics with an OpenMetrics Accept: %d %q", code, header.Get("Content-Type"))
	}
	if !strings.HasSuffix(body, "# EOF\n") || !strings.Contains(body, "omicsq_build_info{") {
		t.Errorf("OpenMetrics body lacks omicsq_build_info or the # EOF trailer")
	}
}

func TestHandlerRoutes(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	h := NewHandler(reg, nil)
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodHead, "/healthz", http.StatusOK},
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed},
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/metrics/extra", http.StatusNotFound},
	} {
		if code, _, _ := get(t, h, tc.method, tc.path, nil); code != tc.want {
			t.Errorf("%s %s: %d; want %d", tc.method, tc.path, code, tc.want)
		}
	}
}
