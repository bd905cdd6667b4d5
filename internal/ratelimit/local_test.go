package ratelimit

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// limiter is the method set the worker codes against; both limiters have it.
type limiter interface {
	Wait(context.Context) (time.Duration, error)
	Ready(context.Context, time.Duration) error
	Throttled(context.Context)
	Rates() (configured, effective float64)
	Stats() Stats
	Close() error
}

var (
	_ limiter = (*Global)(nil)
	_ limiter = (*Local)(nil)
)

func TestLocalPaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLocal(10, 2)
		ctx := context.Background()
		start := time.Now()
		want := []time.Duration{0, 0, 100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}
		for i, w := range want {
			got, err := l.Wait(ctx)
			if err != nil || got != w {
				t.Fatalf("Wait %d = %v, %v; want %v, nil", i, got, err, w)
			}
		}
		if el := time.Since(start); el != 300*time.Millisecond {
			t.Fatalf("5 calls at 10/s with burst 2 took %v, want 300ms", el)
		}
		if st := l.Stats(); st.Grants != 5 {
			t.Fatalf("Grants = %d, want 5", st.Grants)
		}
	})
}

func TestLocalWaitGivesBackOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLocal(10, 1)
		if _, err := l.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if _, err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait past its deadline = %v, want DeadlineExceeded", err)
		}
		// The cancelled reservation is returned: the next call waits only
		// for the rest of the first interval, not for two.
		got, err := l.Wait(context.Background())
		if err != nil || got != 70*time.Millisecond {
			t.Fatalf("Wait after a cancelled one = %v, %v; want 70ms", got, err)
		}
	})
}

func TestLocalReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLocal(10, 1)
		ctx := context.Background()
		if err := l.Ready(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if err := l.Ready(ctx, 0); err != nil { // Ready takes nothing
			t.Fatal(err)
		}
		if _, err := l.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := l.Ready(ctx, 40*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el != 60*time.Millisecond {
			t.Fatalf("Ready(40ms) with the next token 100ms away returned after %v, want 60ms", el)
		}
		if err := l.Ready(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el != 60*time.Millisecond {
			t.Fatalf("Ready(1s) blocked until %v", el)
		}
	})
}

func TestLocalCloseAndCounters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLocal(5, 1)
		l.Throttled(context.Background())
		if c, e := l.Rates(); c != 5 || e != 5 {
			t.Fatalf("Rates() = %v, %v; want 5, 5 (Local does not adapt)", c, e)
		}
		if st := l.Stats(); st.Throttles != 1 {
			t.Fatalf("Throttles = %d, want 1", st.Throttles)
		}
		if _, err := l.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitErr := make(chan error)
		go func() { _, err := l.Wait(context.Background()); waitErr <- err }()
		synctest.Wait() // the goroutine is blocked waiting for its token
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-waitErr; !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait interrupted by Close = %v, want ErrClosed", err)
		}
		if err := l.Ready(context.Background(), 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Ready after Close = %v, want ErrClosed", err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNewLocalRejectsBadRate(t *testing.T) {
	for _, r := range []float64{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewLocal(%v, 1) did not panic", r)
				}
			}()
			NewLocal(r, 1)
		}()
	}
}
