package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// TestVisibilityLag: with a lag, a new group is invisible to a Name lookup
// at first, its Name is nonetheless taken at once (DuplicateName), and the
// lookup finds it once the lag has passed.
func TestVisibilityLag(t *testing.T) {
	t.Parallel()
	const lag = 300 * time.Millisecond
	s, l := startSandbox(t, Options{Visibility: Visibility{Lag: lag}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	ctx := t.Context()

	start := time.Now() // no later than the server's creation time
	created, err := c.RunApplication(ctx, runRequest("lagged"))
	if err != nil {
		t.Fatalf("RunApplication: %v", err)
	}
	_, err = c.RunApplication(ctx, runRequest("lagged"))
	if e, ok := errors.AsType[*submit.Error](err); !ok || !e.DuplicateName {
		t.Errorf("second RunApplication: err = %v, want DuplicateName at once", err)
	}
	found, err := c.FindRunGroupsByName(ctx, nil, "lagged", nil)
	if err != nil {
		t.Fatalf("FindRunGroupsByName: %v", err)
	}
	all, err := c.DescribeRunGroups(ctx, nil)
	if err != nil {
		t.Fatalf("DescribeRunGroups: %v", err)
	}
	if took := time.Since(start); took < lag {
		if len(found) != 0 || all.TotalCount != 0 || len(all.RunGroups) != 0 {
			t.Errorf("within the lag: found %d by Name, TotalCount %d; want the group invisible", len(found), all.TotalCount)
		}
	} else {
		t.Logf("the calls took %v, longer than the lag: invisibility not checked", took)
	}
	if groups := s.RunGroups(); len(groups) != 1 || groups[0].RunGroupId != created.RunGroupId {
		t.Errorf("RunGroups() = %v, want the lagged group at once", groups)
	}

	for {
		found, err = c.FindRunGroupsByName(ctx, nil, "lagged", nil)
		if err != nil {
			t.Fatalf("FindRunGroupsByName: %v", err)
		}
		if len(found) > 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the group never became visible")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(start); took < lag {
		t.Errorf("found after %v, before the %v lag", took, lag)
	}
	if len(found) != 1 || found[0].RunGroupId != created.RunGroupId {
		t.Errorf("found %+v, want %s", found, created.RunGroupId)
	}
	st := s.Stats()
	if st.Visibility.Lag != lag || st.DuplicateNameRejections != 1 || st.RunGroupsCreated != 1 {
		t.Errorf("stats: visibility %+v, duplicates %d, created %d", st.Visibility, st.DuplicateNameRejections, st.RunGroupsCreated)
	}
}

// TestVisibilityLagMax: each group's lag is its own draw in [Lag, LagMax],
// and the draws leave the run-group IDs of the seed unchanged. The clock
// is injected, so the lags are measured exactly.
func TestVisibilityLagMax(t *testing.T) {
	t.Parallel()
	const (
		lag, lagMax = 100 * time.Millisecond, time.Second
		step        = 10 * time.Millisecond
		groups      = 20
	)
	create := func(c *submit.Client) []string {
		var ids []string
		for i := range groups {
			resp, err := c.RunApplication(t.Context(), runRequest(fmt.Sprintf("spread-%02d", i)))
			if err != nil {
				t.Fatalf("RunApplication %d: %v", i, err)
			}
			ids = append(ids, resp.RunGroupId)
		}
		return ids
	}

	clock := newFakeClock(time.Now())
	s, l := startSandbox(t, Options{Seed: 3, Now: clock.Now, Visibility: Visibility{Lag: lag, LagMax: lagMax}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	ids := create(c) // all at the same instant of the injected clock
	if n := len(s.RunGroups()); n != groups {
		t.Fatalf("RunGroups() has %d groups, want %d at once", n, groups)
	}

	// Step the clock through [0, LagMax]; a group first seen at the step
	// after its lag has a lag in (at-step, at].
	firstSeen := make(map[string]time.Duration)
	for at := time.Duration(0); at <= lagMax; at += step {
		resp, err := c.DescribeRunGroups(t.Context(), &submit.DescribeRunGroupsRequest{Limit: new(uint64(100))})
		if err != nil {
			t.Fatalf("DescribeRunGroups at +%v: %v", at, err)
		}
		if int(resp.TotalCount) != len(resp.RunGroups) {
			t.Fatalf("at +%v: TotalCount %d but %d groups listed", at, resp.TotalCount, len(resp.RunGroups))
		}
		if at < lag && resp.TotalCount != 0 {
			t.Errorf("at +%v: %d groups visible before Lag", at, resp.TotalCount)
		}
		if len(resp.RunGroups) < len(firstSeen) {
			t.Errorf("at +%v: %d groups visible, %d were before: a group disappeared", at, len(resp.RunGroups), len(firstSeen))
		}
		for _, g := range resp.RunGroups {
			if _, ok := firstSeen[g.RunGroupId]; !ok {
				firstSeen[g.RunGroupId] = at
			}
		}
		clock.Advance(step)
	}
	distinct := make(map[time.Duration]bool)
	for _, id := range ids {
		at, ok := firstSeen[id]
		if !ok {
			t.Errorf("%s never became visible within LagMax", id)
			continue
		}
		if at < lag || at > lagMax {
			t.Errorf("%s became visible at +%v, outside [%v, %v]", id, at, lag, lagMax)
		}
		distinct[at] = true
	}
	if len(distinct) < groups/4 {
		t.Errorf("%d groups became visible at only %d distinct times; want per-group lags", groups, len(distinct))
	}

	_, plainL := startSandbox(t, Options{Seed: 3})
	if plain := create(newClient(t, plainL.Addr(), defaultCred(), 5*time.Second)); !slices.Equal(plain, ids) {
		t.Errorf("IDs with LagMax %v differ from those without %v for the same seed", ids, plain)
	}
}

// TestVisibilityReorderPages: each call lists the same set of groups in a
// fresh order; turning it off restores creation order.
func TestVisibilityReorderPages(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Visibility: Visibility{ReorderPages: true}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	var created []string
	for i := range 30 {
		resp, err := c.RunApplication(t.Context(), runRequest(fmt.Sprintf("shuffled-%02d", i)))
		if err != nil {
			t.Fatalf("RunApplication %d: %v", i, err)
		}
		created = append(created, resp.RunGroupId)
	}
	sorted := slices.Sorted(slices.Values(created))
	list := func(limit, offset uint64) (uint64, []string) {
		t.Helper()
		resp, err := c.DescribeRunGroups(t.Context(), &submit.DescribeRunGroupsRequest{Limit: new(limit), Offset: new(offset)})
		if err != nil {
			t.Fatalf("DescribeRunGroups: %v", err)
		}
		var ids []string
		for _, g := range resp.RunGroups {
			ids = append(ids, g.RunGroupId)
		}
		return resp.TotalCount, ids
	}

	orders := make(map[string]bool)
	for range 5 {
		total, ids := list(100, 0)
		if total != 30 || !slices.Equal(slices.Sorted(slices.Values(ids)), sorted) {
			t.Fatalf("TotalCount %d, groups %v; want the 30 created", total, ids)
		}
		orders[strings.Join(ids, ",")] = true
	}
	if len(orders) < 2 {
		t.Errorf("5 calls gave %d distinct orders, want fresh orders", len(orders))
	}
	// Pages are still full-sized; across pages groups may repeat or be
	// skipped, which is what the knob is for.
	for _, offset := range []uint64{0, 10, 20} {
		if total, ids := list(10, offset); total != 30 || len(ids) != 10 {
			t.Errorf("offset %d: TotalCount %d, %d groups; want 30, 10", offset, total, len(ids))
		}
	}

	if err := s.SetVisibility(Visibility{}); err != nil {
		t.Fatal(err)
	}
	if _, ids := list(100, 0); !slices.Equal(ids, created) {
		t.Errorf("without ReorderPages: %v, want creation order", ids)
	}
}

// TestVisibilityOverHTTP: GET and PUT /sandbox/visibility round-trip the
// settings with durations as strings, reject unknown keys and bad values,
// and the stats report them.
func TestVisibilityOverHTTP(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{})
	base := "http://" + l.Addr() + "/sandbox/"

	var v Visibility
	if raw := getJSON(t, base+"visibility", &v); v != (Visibility{}) ||
		!bytes.Equal(raw, []byte(`{"reorder_pages":false,"lag":"0s","lag_max":"0s"}`)) {
		t.Errorf("default visibility = %s", raw)
	}
	want := Visibility{Lag: 5 * time.Second, LagMax: 7500 * time.Millisecond, ReorderPages: true}
	code, body := put(t, base+"visibility", `{"lag":"5s","lag_max":"7.5s","reorder_pages":true}`)
	if code != http.StatusOK {
		t.Fatalf("PUT visibility: %d %s", code, body)
	}
	if body != `{"reorder_pages":true,"lag":"5s","lag_max":"7.5s"}` {
		t.Errorf("PUT answered %s", body)
	}
	getJSON(t, base+"visibility", &v)
	if v != want || s.Visibility() != want {
		t.Errorf("visibility = %+v over HTTP, %+v in process; want %+v", v, s.Visibility(), want)
	}
	var st Stats
	raw := getJSON(t, base+"stats", &st)
	if st.Visibility != want || !bytes.Contains(raw, []byte(`"visibility":{"reorder_pages":true,"lag":"5s","lag_max":"7.5s"}`)) {
		t.Errorf("stats visibility = %+v in %s", st.Visibility, raw)
	}

	for _, bad := range []string{
		`{"lagg":"1s"}`,                   // unknown key
		`{"Lag":"1s","lag_maximum":"2s"}`, // unknown key
		`{"lag":"soon"}`,                  // not a duration
		`{"lag":5}`,                       // a number, not a duration string
		`{"lag_max":"1 second"}`,          // not a Go duration
		`{"lag":"-1s"}`,                   // negative
		`{"lag":"2s","lag_max":"1s"}`,     // LagMax below Lag
		`{"reorder_pages":"yes"}`,         // wrong type
		`[]`,
	} {
		if code, body := put(t, base+"visibility", bad); code != http.StatusBadRequest {
			t.Errorf("PUT visibility %s: status %d (%s), want 400", bad, code, body)
		}
	}
	if s.Visibility() != want {
		t.Errorf("rejected PUTs changed the visibility to %+v", s.Visibility())
	}
	// A partial body replaces the whole: absent keys are zero.
	if code, body := put(t, base+"visibility", `{"lag":"250ms"}`); code != http.StatusOK || s.Visibility() != (Visibility{Lag: 250 * time.Millisecond}) {
		t.Errorf("PUT {lag:250ms}: %d %s, visibility %+v", code, body, s.Visibility())
	}
	resp, err := http.Post(base+"visibility", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST visibility: status %d, want 405", resp.StatusCode)
	}
}

func TestVisibilityValidate(t *testing.T) {
	t.Parallel()
	for name, v := range map[string]Visibility{
		"negative lag":      {Lag: -time.Second},
		"negative lag max":  {LagMax: -time.Second},
		"lag max below lag": {Lag: 2 * time.Second, LagMax: time.Second},
	} {
		if err := v.Validate(); err == nil {
			t.Errorf("%s: Validate() = nil", name)
		}
		if _, err := New(Options{Visibility: v}); err == nil {
			t.Errorf("%s: New accepted invalid visibility", name)
		}
	}
	for name, v := range map[string]Visibility{
		"zero":          {},
		"lag only":      {Lag: time.Second},
		"equal":         {Lag: time.Second, LagMax: time.Second},
		"range":         {Lag: time.Second, LagMax: time.Minute},
		"lag max only":  {LagMax: time.Second},
		"reorder only":  {ReorderPages: true},
		"huge lag span": {LagMax: time.Duration(1<<63 - 1)},
	} {
		if err := v.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
	// The widest span draws without overflowing.
	st := newStore(1, Visibility{LagMax: time.Duration(1<<63 - 1)}, Execution{})
	st.mu.Lock()
	if from := st.visibleFrom(time.Unix(0, 0)); from.Before(time.Unix(0, 0)) {
		t.Errorf("visibleFrom with the widest span = %v, before creation", from)
	}
	st.mu.Unlock()

	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetVisibility(Visibility{Lag: -1}); err == nil {
		t.Error("SetVisibility accepted a negative Lag")
	}
	if s.Visibility() != (Visibility{}) {
		t.Errorf("a rejected SetVisibility changed the visibility to %+v", s.Visibility())
	}
}
