package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/omicsq/omicsq/internal/submit"
)

// The client's local rules (internal/submit) against the sandbox's own
// validator, written apart from them from the RunApplication page: the
// client must never refuse a body the sandbox (standing in for the API)
// would accept, must accept the whole allowed corpus, and must send
// something the sandbox accepts for every body it accepts.

func clientRefusal(body []byte) *submit.ValidationError {
	_, err := submit.DecodeRunApplication(body, submit.DefaultLimits())
	if err == nil {
		return nil
	}
	var ve *submit.ValidationError
	if errors.As(err, &ve) {
		return ve
	}
	return &submit.ValidationError{Code: "?", Reason: err.Error()}
}

func TestClientAcceptsTheAllowedCorpus(t *testing.T) {
	t.Parallel()
	_, l := startSandbox(t, Options{})
	for _, cb := range readCorpus(t, "allowed") {
		req, err := submit.DecodeRunApplication(cb.body, submit.DefaultLimits())
		if err != nil {
			t.Errorf("%s: the client refuses a body the page allows: %v", cb.name, err)
			continue
		}
		// What the worker sends is the normalised request, re-encoded.
		sent, _ := json.Marshal(req)
		// (The page's two examples share a Name: DuplicateName means the
		// body passed validation.)
		if a := send(t, rawRequest{body: sent}.build(t, "http://"+l.Addr()+"/")); answerCode(a) != "" && answerCode(a) != codeDuplicateName {
			t.Errorf("%s: the sandbox refuses what the client sends for it: %s", cb.name, answerCode(a))
		}
	}
}

func TestClientRefusesTheForbiddenCorpusAsTheSandboxDoes(t *testing.T) {
	t.Parallel()
	for _, cb := range readCorpus(t, "forbidden") {
		want := readWant(t, cb.name)
		if want.code == codeRequestSizeLimitExceeded {
			continue // the API's 10 MB; the client's own bound is the 1 MiB message limit
		}
		ve := clientRefusal(cb.body)
		switch {
		case ve == nil:
			t.Errorf("%s: the client accepts a body the page forbids (%s %s)", cb.name, want.code, want.field)
		// The sandbox names an unknown nested key's object, not the key.
		case ve.Code != want.code || (want.field != "-" && ve.Field != want.field && !strings.HasPrefix(ve.Field, want.field+".")):
			t.Errorf("%s: the client answers %s %s, the sandbox %s %s", cb.name, ve.Code, ve.Field, want.code, want.field)
		}
	}
}

// mutations derive bodies near the corpus: each one changes one thing a
// producer could get wrong or spell differently.
func mutations(rng *rand.Rand, body []byte) [][]byte {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	fields := []string{"ApplicationId", "Name", "EnvironmentId", "ProjectId", "Description", "InputCosUri", "InputBase64",
		"TableId", "TableRowUuids", "CacheClearDelay", "ApplicationVersionId", "Option", "NFOption", "WorkDir", "AccessMode",
		"VolumeIds", "ResultNotification", "TimeoutNotification", "TimeoutNotificationMinutes", "EmailForNotification"}
	values := []any{"", " ", "x", "\u0007", "\n", strings.Repeat("长", 80), "cos://b/k", "https://b.cos.example/k", "PUBLIC",
		"private", 0, -1, 1.5, 24.0, 4, 2881, true, nil, []any{}, []any{"a", ""}, map[string]any{}, "e30", "e30=", "bm90IGpzb24=",
		map[string]any{"FailureMode": "x"}, map[string]any{"LaunchDir": "/l"}, map[string]any{"Unknown": 1}}
	var out [][]byte
	for range 12 {
		c := make(map[string]any, len(m)+1)
		for k, v := range m {
			c[k] = v
		}
		f := fields[rng.IntN(len(fields))]
		if rng.IntN(4) == 0 {
			delete(c, f)
		} else {
			c[f] = values[rng.IntN(len(values))]
		}
		b, err := json.Marshal(c)
		if err == nil {
			out = append(out, b)
		}
	}
	return out
}

// TestClientNeverStricterThanTheSandbox is the test that fails if any body
// the client refuses locally would be accepted by the sandbox.
func TestClientNeverStricterThanTheSandbox(t *testing.T) {
	t.Parallel()
	_, l := startSandbox(t, Options{})
	rng := rand.New(rand.NewPCG(20261202, 12))
	var checked, refused int
	for _, dir := range []string{"allowed", "forbidden"} {
		for _, cb := range readCorpus(t, dir) {
			for _, body := range append(mutations(rng, cb.body), cb.body) {
				ve := clientRefusal(body)
				if ve == nil || ve.Code == submit.CodeRequestSizeLimitExceeded {
					continue
				}
				checked++
				a := send(t, rawRequest{body: body}.build(t, "http://"+l.Addr()+"/"))
				if answerCode(a) == "" {
					t.Errorf("the client refuses (%s %s: %s) a body the sandbox accepts: %s", ve.Code, ve.Field, ve.Reason, trim(body))
					continue
				}
				refused++
			}
		}
	}
	if checked < 200 {
		t.Errorf("only %d refused bodies were compared; the mutations test too little", checked)
	}
	t.Logf("%d bodies the client refuses, all %d refused by the sandbox too", checked, refused)
}

func trim(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%s… (%d bytes)", b[:300], len(b))
	}
	return string(b)
}
