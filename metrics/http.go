package metrics

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewHandler serves the worker's operational endpoints:
//
//   - /metrics: everything g gathers, in OpenMetrics when the scraper asks
//     for it (needed for exemplars and created timestamps);
//   - /healthz: 200 "ok" while the process runs (the liveness probe: NATS or
//     API trouble must not restart the pod, which would not fix them);
//   - /readyz: 200 "ok" when ready returns nil, else 503 with the error text
//     as text/plain. A nil ready means always ready.
//
// Other paths are 404 and other methods than GET and HEAD are 405.
func NewHandler(g prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				writeText(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		writeText(w, http.StatusOK, "ok")
	})
	return mux
}

func writeText(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	// Probe answers describe this instant; a cached one would mislead.
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, body)
}
