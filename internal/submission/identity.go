package submission

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"time"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/submit"
)

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// IdentityOf returns the identity a request pins in the ledger: digests of
// its Name, its ProjectId and its canonical form (the typed request encoded
// again, so spacing, key order and blank optional fields do not matter).
func IdentityOf(req *submit.RunApplicationRequest, now time.Time) ledger.Identity {
	canonical, _ := json.Marshal(req) // a decoded request always encodes
	project := ""
	if req.ProjectId != nil {
		project = *req.ProjectId
	}
	return ledger.Identity{
		NameDigest:    digest("name", req.Name),
		ProjectDigest: digest("project", project),
		Fingerprint:   digest("request", string(canonical)),
		PinnedAt:      now.UTC(),
	}
}

// Owns reports whether g is the run group req created, on everything the
// lookup shows: Name, application, environment, project, table, rows (by
// count), description, input, options, work dir, access mode, application
// version (when the API reports it), and a creation time not before the
// request's first call minus skew. A field the request leaves out matches
// only its default. What the lookup cannot show (e-mail and timeout
// notification settings, volume IDs, cache delay, which rows) is not
// compared; docs/reliability.md lists it.
func Owns(g *submit.RunGroup, req *submit.RunApplicationRequest, pinnedAt time.Time, skew time.Duration) bool {
	if g.Name != req.Name || g.ApplicationId != req.ApplicationId || g.EnvironmentId != req.EnvironmentId {
		return false
	}
	if req.ProjectId != nil && *req.ProjectId != g.ProjectId {
		return false
	}
	if deref(req.TableId, "") != g.TableId || deref(req.Description, "") != g.Description ||
		deref(req.WorkDir, "") != g.WorkDir || deref(req.InputCosUri, "") != g.InputCosUri {
		return false
	}
	if !strings.EqualFold(deref(req.AccessMode, "PRIVATE"), orDefault(g.AccessMode, "PRIVATE")) {
		return false
	}
	if n := len(req.TableRowUuids); n > 0 && g.TotalRun != 0 && g.TotalRun != uint64(n) {
		return false
	}
	if !sameInput(req, g) || !sameOptions(req.Option, g.Option) || !sameOptions(req.NFOption, g.NFOption) {
		return false
	}
	if !sameVersion(req.ApplicationVersionId, g.ApplicationVersion) {
		return false
	}
	if created, err := time.Parse(time.RFC3339, g.CreateTime); err == nil && !pinnedAt.IsZero() &&
		created.Before(pinnedAt.Add(-skew)) {
		return false
	}
	return true
}

func deref(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sameInput compares the inline input as JSON values, since the API may
// store it re-encoded. A group that reports no input cannot be told apart
// on it.
func sameInput(req *submit.RunApplicationRequest, g *submit.RunGroup) bool {
	if req.InputBase64 == nil {
		return req.InputCosUri != nil || g.Input == ""
	}
	if g.Input == "" {
		return true
	}
	doc, err := base64.StdEncoding.DecodeString(*req.InputBase64)
	if err != nil {
		doc, err = base64.RawStdEncoding.DecodeString(*req.InputBase64)
	}
	if err != nil {
		return false
	}
	var want, got any
	if json.Unmarshal(doc, &want) != nil || json.Unmarshal([]byte(g.Input), &got) != nil {
		return bytes.Equal(bytes.TrimSpace(doc), bytes.TrimSpace([]byte(g.Input)))
	}
	return reflect.DeepEqual(want, got)
}

// sameOptions compares option structs field by field, a nil pointer field
// (or a nil struct) matching only the zero value.
func sameOptions[T any](want, got *T) bool {
	var zero T
	if want == nil {
		want = &zero
	}
	if got == nil {
		got = &zero
	}
	wv, gv := reflect.ValueOf(want).Elem(), reflect.ValueOf(got).Elem()
	for i := range wv.NumField() {
		if !sameField(wv.Field(i), gv.Field(i)) {
			return false
		}
	}
	return true
}

func sameField(w, g reflect.Value) bool {
	if w.Kind() != reflect.Pointer {
		return reflect.DeepEqual(w.Interface(), g.Interface())
	}
	wz, gz := w.IsNil(), g.IsNil()
	switch {
	case wz && gz:
		return true
	case wz:
		return g.Elem().IsZero()
	case gz:
		return w.Elem().IsZero()
	}
	return reflect.DeepEqual(w.Elem().Interface(), g.Elem().Interface())
}

// sameVersion checks a pinned application version against the group's
// ApplicationVersion object, when the API reports one with an ID.
func sameVersion(want *string, raw json.RawMessage) bool {
	if want == nil || len(raw) == 0 {
		return true
	}
	var v struct{ ApplicationVersionId string }
	if json.Unmarshal(raw, &v) != nil || v.ApplicationVersionId == "" {
		return true
	}
	return v.ApplicationVersionId == *want
}
