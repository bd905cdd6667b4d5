package retry

import (
	"strings"
	"testing"
	"time"
)

func TestScheduleBoundsAttempts(t *testing.T) {
	p := DefaultPolicy()
	p.MaxAttempts = 4
	p.RandomizationFactor = 0
	now := time.Unix(1000, 0)
	s := p.Resume(1, now, func() time.Time { return now })
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}
	for i, w := range want {
		d, ok := s.Next()
		if !ok || d != w {
			t.Fatalf("step %d: Next() = %v, %v; want %v, true", i, d, ok, w)
		}
	}
	if d, ok := s.Next(); ok {
		t.Fatalf("Next() after %d attempts = %v, true; want exhausted", p.MaxAttempts, d)
	}
	if got := s.Attempts(); got != 4 {
		t.Fatalf("Attempts() = %d, want 4", got)
	}
}

func TestScheduleBoundsElapsed(t *testing.T) {
	p := DefaultPolicy()
	p.RandomizationFactor = 0
	p.MaxElapsed = 10 * time.Second
	first := time.Unix(1000, 0)
	now := first.Add(9 * time.Second)
	s := p.Resume(1, first, func() time.Time { return now })
	if d, ok := s.Next(); !ok || d != 500*time.Millisecond {
		t.Fatalf("Next() = %v, %v; want 500ms, true", d, ok)
	}
	now = first.Add(9*time.Second + 600*time.Millisecond)
	if d, ok := s.Next(); ok {
		t.Fatalf("Next() past MaxElapsed = %v, true; want exhausted", d)
	}
}

func TestResumeContinuesGrowth(t *testing.T) {
	p := DefaultPolicy()
	p.RandomizationFactor = 0
	now := time.Unix(1000, 0)
	s := p.Resume(3, now, func() time.Time { return now })
	if d, ok := s.Next(); !ok || d != 2*time.Second {
		t.Fatalf("Next() after resuming at 3 attempts = %v, %v; want 2s, true", d, ok)
	}
}

func TestJitterStaysInRange(t *testing.T) {
	p := DefaultPolicy()
	now := time.Unix(1000, 0)
	for i := 0; i < 200; i++ {
		s := p.Resume(1, now, func() time.Time { return now })
		d, ok := s.Next()
		if !ok || d < 250*time.Millisecond || d > 750*time.Millisecond {
			t.Fatalf("first delay = %v, %v; want within [250ms, 750ms]", d, ok)
		}
	}
}

func TestValidateNamesSetting(t *testing.T) {
	p := DefaultPolicy()
	p.MaxAttempts = 0
	p.Multiplier = 0.5
	err := p.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want errors")
	}
	for _, want := range []string{"max attempts", "multiplier"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q, want it to mention %q", err, want)
		}
	}
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatalf("DefaultPolicy().Validate() = %v", err)
	}
}
