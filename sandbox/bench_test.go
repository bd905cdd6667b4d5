package sandbox

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkServeRunApplication measures the handler's cost per signed
// RunApplication call (signature verification, strict decoding, store,
// statistics, answer), without the network. Requests are signed before
// the timer starts.
func BenchmarkServeRunApplication(b *testing.B) {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	reqs := make([]*http.Request, b.N)
	bodies := make([][]byte, b.N)
	for i := range reqs {
		bodies[i] = fmt.Appendf(nil, `{"ApplicationId":"app-sweet-cerulean-frog-569111","ProjectId":"prj-peaceful-pink-bird-631828",`+
			`"Name":"bench-%d","Description":"benchmark","EnvironmentId":"env-05d0g0w2","InputBase64":"e30K","CacheClearDelay":0,`+
			`"Option":{"FailureMode":"NoNewCalls","UseCallCache":true,"UseErrorOnHold":true}}`, i)
		reqs[i] = httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9100/", nil)
		signRequest(reqs[i], bodies[i], actionRunApplication, APIVersion, testRegion, DefaultSecretID, DefaultSecretKey, now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r := reqs[i]
		r.Body = readCloser{bytes.NewReader(bodies[i])}
		r.ContentLength = int64(len(bodies[i]))
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if !bytes.Contains(w.Body.Bytes(), []byte(`"RunGroupId"`)) {
			b.Fatalf("call %d: %s", i, w.Body.Bytes())
		}
	}
	b.StopTimer()
	if got := s.Stats().RunGroupsCreated; got != b.N {
		b.Fatalf("created %d groups, want %d", got, b.N)
	}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// BenchmarkServeRunApplicationHTTP pushes concurrent calls from the
// worker's client (SDK signing) over loopback HTTP and reports calls/s.
func BenchmarkServeRunApplicationHTTP(b *testing.B) {
	s, l := startSandbox(b, Options{})
	c := newClient(b, l.Addr(), defaultCred(), 10*time.Second)
	var seq atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.RunApplication(b.Context(), runRequest(fmt.Sprintf("http-%d", seq.Add(1)))); err != nil {
				b.Errorf("RunApplication: %v", err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
	b.StopTimer()
	if got := s.Stats().RunGroupsCreated; got != b.N {
		b.Errorf("created %d groups, want %d", got, b.N)
	}
}
