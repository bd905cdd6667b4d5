package console

import (
	"bytes"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/omicsq/omicsq/internal/ledger"
)

// ledgerView is what the request page shows of the key's ledger entry:
// its state and history, nothing of the request itself.
type ledgerView struct {
	Entry ledger.Entry
}

func (s *Server) ledgerHistory(r *http.Request, key string) (*ledgerView, error) {
	l, err := ledger.Open(r.Context(), s.cfg.JS, s.cfg.Topology.LedgerBucket)
	if err != nil {
		return nil, err
	}
	e, _, err := l.Get(r.Context(), key)
	if err != nil {
		return nil, err
	}
	if e.Key == "" {
		return nil, nil
	}
	return &ledgerView{Entry: e}, nil
}

var funcs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		d := time.Since(t).Round(time.Second)
		if d < 0 {
			d = 0
		}
		return d.String() + " ago"
	},
	"utc":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"rate":  func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"clean": printable,
	"inc":   func(n int) int { return n + 1 },
}

func parsePages() (*template.Template, error) {
	t := template.New("").Funcs(funcs)
	return t.ParseFS(assets, "assets/*.html")
}

// render writes page inside the layout; a template error is a 500 with
// nothing of the half-written page.
func (s *Server) render(w http.ResponseWriter, page, who string, data map[string]any) {
	data["Page"], data["Who"], data["CSRF"], data["ReadOnly"] = page, who, s.csrfToken(who), s.cfg.ReadOnly
	var buf bytes.Buffer
	if err := s.pages.ExecuteTemplate(&buf, page+".html", data); err != nil {
		s.cfg.Log.Error("console: render", "page", page, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}
