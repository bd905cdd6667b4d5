package sandbox

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

func getJSON(t *testing.T, url string, into any) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatalf("GET %s: decode: %v\n%s", url, err, b)
	}
	return b
}

func put(t *testing.T, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStatsOverHTTP: GET /sandbox/stats and /sandbox/run-groups report
// what happened; the run-group list is only there on request; faults and
// forced errors can be changed over HTTP.
func TestStatsOverHTTP(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Now())
	_, l := startSandbox(t, Options{Rate: 2, Now: clock.Now})
	base := "http://" + l.Addr() + "/sandbox/"
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	var ids []string
	for i, name := range []string{"a", "b", "c"} { // the third is throttled
		resp, err := c.RunApplication(t.Context(), runRequest(name))
		if i < 2 {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ids = append(ids, resp.RunGroupId)
		} else if submit.ClassOf(err) != submit.ClassThrottled {
			t.Fatalf("%s: err = %v, want throttled", name, err)
		}
	}
	clock.Advance(time.Second)
	if _, err := c.RunApplication(t.Context(), runRequest("a")); !strings.Contains(errString(err), codeDuplicateName) {
		t.Fatalf("duplicate: err = %v", err)
	}

	var st Stats
	raw := getJSON(t, base+"stats", &st)
	if bytes.Contains(raw, []byte(`"run_groups"`)) {
		t.Errorf("stats without ?run_groups=1 lists run groups: %s", raw)
	}
	ra := st.Actions[actionRunApplication]
	if st.Rate != 2 || st.RunGroupsCreated != 2 || st.DuplicateNameRejections != 1 ||
		ra.Arrivals != 4 || ra.Admitted != 3 || ra.Throttled != 1 || ra.MaxAdmitted1s != 2 || ra.MaxArrivals1s != 3 ||
		ra.Calls[outcomeSuccess] != 2 || ra.Calls[outcomeThrottled] != 1 || ra.Calls[outcomeDuplicateName] != 1 {
		t.Errorf("stats = %s", raw)
	}
	if len(ra.PerSecond) != 2 || ra.PerSecond[0].Arrivals != 3 || ra.PerSecond[0].Admitted != 2 || ra.PerSecond[0].Throttled != 1 ||
		ra.PerSecond[1].Unix != ra.PerSecond[0].Unix+1 {
		t.Errorf("per_second = %+v", ra.PerSecond)
	}
	for _, key := range []string{`"max_arrivals_1s"`, `"max_admitted_1s"`, `"per_second"`, `"faults_injected"`, `"answered_after_client_gone"`, `"latency":"0s"`} {
		if !bytes.Contains(raw, []byte(key)) {
			t.Errorf("stats JSON lacks %s", key)
		}
	}

	getJSON(t, base+"stats?run_groups=1", &st)
	if len(st.RunGroups) != 2 || st.RunGroups[0].RunGroupID != ids[0] || st.RunGroups[1].Name != "b" || st.RunGroups[0].ProjectID != DefaultProjectID {
		t.Errorf("run_groups = %+v", st.RunGroups)
	}
	var groups []RunGroup
	getJSON(t, base+"run-groups", &groups)
	if len(groups) != 2 || groups[1].RunGroupId != ids[1] || groups[1].Region != testRegion || groups[1].Input != "{}\n" {
		t.Errorf("run-groups = %+v", groups)
	}

	// Faults over HTTP, with Latency as a duration string.
	if code, body := put(t, base+"faults", `{"internal_error_p":1,"latency":"1ms","actions":["DescribeRunGroups"]}`); code != http.StatusOK {
		t.Fatalf("PUT faults: %d %s", code, body)
	}
	var f Faults
	getJSON(t, base+"faults", &f)
	if f.InternalErrorP != 1 || f.Latency != time.Millisecond || len(f.Actions) != 1 {
		t.Errorf("faults = %+v", f)
	}
	if _, err := c.DescribeRunGroups(t.Context(), nil); !strings.Contains(errString(err), codeInternalError) {
		t.Errorf("DescribeRunGroups with InternalErrorP 1: %v", err)
	}
	for _, bad := range []string{`{"internal_error_p":2}`, `{"internal_eror_p":1}`, `{"latency":"soon"}`} {
		if code, _ := put(t, base+"faults", bad); code != http.StatusBadRequest {
			t.Errorf("PUT faults %s: status %d, want 400", bad, code)
		}
	}
	if code, body := put(t, base+"faults", `{}`); code != http.StatusOK {
		t.Fatalf("PUT faults {}: %d %s", code, body)
	}

	if code, _ := put(t, base+"force-error", `{"code":"AuthFailure.UnauthorizedOperation"}`); code != http.StatusOK {
		t.Fatalf("PUT force-error: %d", code)
	}
	if _, err := c.DescribeRunGroups(t.Context(), nil); !strings.Contains(errString(err), "AuthFailure.UnauthorizedOperation") {
		t.Errorf("forced: %v", err)
	}
	put(t, base+"force-error", `{"code":""}`)
	if _, err := c.DescribeRunGroups(t.Context(), nil); err != nil {
		t.Errorf("after un-forcing: %v", err)
	}

	resp, err := http.Get(base + "nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown endpoint: status %d", resp.StatusCode)
	}
	resp, err = http.Post(base+"stats", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST stats: status %d", resp.StatusCode)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
