package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Visibility makes DescribeRunGroups eventually consistent. The real API
// documents no read-after-write guarantee for DescribeRunGroups, so a
// client that looks a run group up by Name after an ambiguous
// RunApplication must not take "not found" as "not created". The zero
// value is the sandbox's default: every group is visible at once and pages
// follow creation order.
//
// Only lookups lag. RunApplication's Name uniqueness stays immediate and
// atomic (a second call with a taken Name is a DuplicateName whether or not
// the first group is visible yet), and Server.RunGroups, SetRunGroupStatus
// and the statistics always see every group.
type Visibility struct {
	// Lag is how long after its creation a run group stays invisible to
	// DescribeRunGroups: it is neither returned nor counted in TotalCount.
	Lag time.Duration `json:"-"`
	// LagMax, when greater than Lag, makes each group's lag a uniform draw
	// from [Lag, LagMax], taken once when the group is created, from a
	// seeded random source of its own: turning it on changes neither the
	// run-group IDs nor the fault sequence of a seed. 0 means every group
	// lags exactly Lag.
	LagMax time.Duration `json:"-"`
	// ReorderPages makes each DescribeRunGroups call list the visible
	// matching groups in a fresh random order, as a replicated index may.
	// Offset paging then skips and repeats groups between pages; a client
	// that pages must tolerate both.
	ReorderPages bool `json:"reorder_pages"`
}

// MarshalJSON encodes v with Lag and LagMax as Go duration strings such as
// "5s", like Faults.Latency.
func (v Visibility) MarshalJSON() ([]byte, error) {
	type plain Visibility // no MarshalJSON: avoids recursion
	return json.Marshal(struct {
		plain
		Lag    string `json:"lag"`
		LagMax string `json:"lag_max"`
	}{plain(v), v.Lag.String(), v.LagMax.String()})
}

// UnmarshalJSON decodes the form MarshalJSON produces; unknown keys are
// rejected so a misspelt knob does not silently do nothing. Absent keys
// are zero.
func (v *Visibility) UnmarshalJSON(b []byte) error {
	type plain Visibility
	var w struct {
		plain
		Lag    string `json:"lag"`
		LagMax string `json:"lag_max"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("sandbox: visibility: %w", err)
	}
	*v = Visibility(w.plain)
	for _, d := range []struct {
		name string
		text string
		into *time.Duration
	}{{"lag", w.Lag, &v.Lag}, {"lag_max", w.LagMax, &v.LagMax}} {
		if d.text == "" {
			continue
		}
		parsed, err := time.ParseDuration(d.text)
		if err != nil {
			return fmt.Errorf("sandbox: visibility: %s: %w", d.name, err)
		}
		*d.into = parsed
	}
	return nil
}

// Validate reports the first invalid setting, naming the field.
func (v Visibility) Validate() error {
	switch {
	case v.Lag < 0:
		return fmt.Errorf("sandbox: visibility: Lag must not be negative")
	case v.LagMax < 0:
		return fmt.Errorf("sandbox: visibility: LagMax must not be negative")
	case v.LagMax != 0 && v.LagMax < v.Lag:
		return fmt.Errorf("sandbox: visibility: LagMax must be 0 or at least Lag")
	}
	return nil
}

// SetVisibility replaces the visibility settings. A group's lag is fixed
// when it is created, so the new Lag and LagMax apply to groups created
// from now on; ReorderPages applies to the next DescribeRunGroups call.
// The random source continues; it is not reseeded.
func (s *Server) SetVisibility(v Visibility) error {
	if err := v.Validate(); err != nil {
		return err
	}
	s.store.setVisibility(v)
	return nil
}

// Visibility returns the current visibility settings.
func (s *Server) Visibility() Visibility { return s.store.visibility() }

// visibleFrom draws the moment a group created at now becomes visible to
// DescribeRunGroups; the zero time means at once. st.mu must be held, so
// draws follow creation order and a sequential client gets the same lags
// for the same seed.
func (st *store) visibleFrom(now time.Time) time.Time {
	st.visMu.Lock()
	defer st.visMu.Unlock()
	v := st.vis
	lag := v.Lag
	if v.LagMax > v.Lag {
		// In uint64 so that LagMax-Lag+1 cannot overflow.
		lag += time.Duration(st.visRng.Uint64N(uint64(v.LagMax-v.Lag) + 1))
	}
	if lag == 0 {
		return time.Time{}
	}
	return now.Add(lag)
}

func (st *store) setVisibility(v Visibility) {
	st.visMu.Lock()
	defer st.visMu.Unlock()
	st.vis = v
}

func (st *store) visibility() Visibility {
	st.visMu.Lock()
	defer st.visMu.Unlock()
	return st.vis
}

// visibleAt reports whether DescribeRunGroups sees sg at now.
func (sg *storedGroup) visibleAt(now time.Time) bool {
	return sg.visibleFrom.IsZero() || !now.Before(sg.visibleFrom)
}
