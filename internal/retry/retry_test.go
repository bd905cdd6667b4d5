package retry

import (
	"strings"
	"testing"
	"time"
)

func TestNextBoundsAttempts(t *testing.T) {
	p := DefaultPolicy()
	p.MaxAttempts = 4
	p.RandomizationFactor = 0
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}
	for i, w := range want {
		d, ok := p.Next(i+1, 0)
		if !ok || d != w {
			t.Fatalf("step %d: Next() = %v, %v; want %v, true", i, d, ok, w)
		}
	}
	if d, ok := p.Next(4, 0); ok {
		t.Fatalf("Next() after %d attempts = %v, true; want exhausted", p.MaxAttempts, d)
	}
}

func TestNextBoundsActiveTime(t *testing.T) {
	p := DefaultPolicy()
	p.RandomizationFactor = 0
	p.MaxElapsed = 10 * time.Second
	if d, ok := p.Next(1, 9*time.Second); !ok || d != 500*time.Millisecond {
		t.Fatalf("Next() = %v, %v; want 500ms, true", d, ok)
	}
	if d, ok := p.Next(1, 9*time.Second+600*time.Millisecond); ok {
		t.Fatalf("Next() past MaxElapsed = %v, true; want exhausted", d)
	}
}

func TestNextContinuesGrowth(t *testing.T) {
	p := DefaultPolicy()
	p.RandomizationFactor = 0
	if d, ok := p.Next(3, 0); !ok || d != 2*time.Second {
		t.Fatalf("Next() after 3 attempts = %v, %v; want 2s, true", d, ok)
	}
}

func TestJitterStaysInRange(t *testing.T) {
	p := DefaultPolicy()
	for i := 0; i < 200; i++ {
		d, ok := p.Next(1, 0)
		if !ok || d < 250*time.Millisecond || d > 750*time.Millisecond {
			t.Fatalf("first delay = %v, %v; want within [250ms, 750ms]", d, ok)
		}
	}
}

func TestDelayHasNoBudget(t *testing.T) {
	p := DefaultPolicy()
	p.MaxAttempts = 2
	p.RandomizationFactor = 0
	if d := p.Delay(100); d != p.MaxInterval {
		t.Fatalf("Delay(100) = %v, want the cap %v", d, p.MaxInterval)
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
