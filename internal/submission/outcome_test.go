package submission

import (
	"testing"

	"github.com/omicsq/omicsq/internal/submit"
)

func TestRetryReasonOf(t *testing.T) {
	for c, want := range map[submit.Class]RetryReason{
		submit.ClassThrottled: RetryThrottled,
		submit.ClassTransient: RetryTransient,
		submit.ClassAmbiguous: RetryAmbiguous,
		submit.ClassSystemic:  RetrySystemic,
	} {
		if got, ok := RetryReasonOf(c); !ok || got != want {
			t.Errorf("RetryReasonOf(%s) = %q, %v; want %q", c, got, ok, want)
		}
		// The label value is the class's name, as docs/metrics.md lists it.
		if string(want) != c.String() {
			t.Errorf("retry reason %q for class %s", want, c)
		}
	}
	for _, c := range []submit.Class{0, submit.ClassPermanent} {
		if got, ok := RetryReasonOf(c); ok {
			t.Errorf("RetryReasonOf(%s) = %q, want no retry", c, got)
		}
	}
}
