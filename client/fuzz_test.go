package client_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
)

// roundTrip checks that an accepted value re-encodes, that the encoding is
// accepted again, and that the second decode equals the first (times are
// compared as instants, since JSON keeps an offset, not a *time.Location).
func roundTrip[T any](t *testing.T, first T, decode func([]byte) (T, error)) {
	t.Helper()
	enc, err := json.Marshal(first)
	if err != nil {
		t.Fatalf("accepted value does not re-encode: %v", err)
	}
	second, err := decode(enc)
	if err != nil {
		t.Fatalf("re-encoded value is rejected: %v\n%s", err, enc)
	}
	if !equalValues(reflect.ValueOf(first), reflect.ValueOf(second)) {
		t.Fatalf("re-decoded value differs\nfirst:  %+v\nsecond: %+v", first, second)
	}
	enc2, err := json.Marshal(second)
	if err != nil || string(enc2) != string(enc) {
		t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
	}
}

var timeType = reflect.TypeFor[time.Time]()

// equalValues is reflect.DeepEqual except that time.Time compares with
// Equal and json.RawMessage compares compacted.
func equalValues(a, b reflect.Value) bool {
	if a.Type() == timeType {
		return a.Interface().(time.Time).Equal(b.Interface().(time.Time))
	}
	if a.Type() == reflect.TypeFor[json.RawMessage]() {
		x, y := a.Interface().(json.RawMessage), b.Interface().(json.RawMessage)
		cx, _ := json.Marshal(x)
		cy, _ := json.Marshal(y)
		return string(cx) == string(cy)
	}
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if !equalValues(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValues(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

func FuzzDecodeResult(f *testing.F) {
	at := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	seed, _ := json.Marshal(client.Result{Key: "sha256-0123", RunGroupID: "run-ashamed-turquoise-rooster-131773",
		RequestID: "2f867f15-a2a6-4d42-b6e0-6e06010782ac", Attempts: 1, EnqueuedAt: at, SubmittedAt: at.Add(time.Second), Worker: "w-1"})
	f.Add(seed)
	f.Add([]byte(`{"key":"k","run_group_id":"r","attempts":2,"reconciled":true,"enqueued_at":"2026-01-02T03:04:05.123+08:00","submitted_at":"0001-01-01T00:00:00Z","worker":""}`))
	f.Add([]byte(`{"key":"k","run_group_id":"r","extra":1}`))
	f.Add([]byte(`{"key":"k","run_group_id":"r"} {}`))
	f.Add([]byte(`{"key":"","run_group_id":"r"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := client.DecodeResult(data)
		if err != nil {
			return
		}
		if r.Key == "" || r.RunGroupID == "" {
			t.Fatalf("accepted a result without key or run_group_id: %+v", r)
		}
		roundTrip(t, r, client.DecodeResult)
	})
}

func FuzzDecodeDeadLetter(f *testing.F) {
	at := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	seed, _ := json.Marshal(client.DeadLetter{
		Key:     "sha256-0123",
		Request: json.RawMessage(`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K"}`),
		Reason:  "permanent_error",
		Error: client.Failure{Class: "permanent", Code: "ResourceNotFound.ApplicationNotExist",
			Message: "the application does not exist", RequestID: "2f86"},
		Attempts: 1, Deliveries: 2, EnqueuedAt: at, FailedAt: at.Add(time.Minute), Worker: "w-1", StreamSequence: 42,
		History: []client.Event{{At: at, Kind: "call", Outcome: "permanent", Code: "ResourceNotFound.ApplicationNotExist", Worker: "w-1"}},
	})
	f.Add(seed)
	f.Add([]byte(`{"key":"k","raw_base64":"bm90IGpzb24=","reason":"invalid_request","error":{"class":"invalid","code":"InvalidParameter","field":"Name"}}`))
	f.Add([]byte(`{"key":"k","request":{ "a" : [1, 2] },"reason":"r","error":{}}`))
	f.Add([]byte(`{"key":"k","request":"x","reason":"r","history":[{"at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"key":"k","reason":"r"}`))
	f.Add([]byte(`{"key":"k","request":null,"reason":"r"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := client.DecodeDeadLetter(data)
		if err != nil {
			return
		}
		// Only an invalid_request can have had an empty body (no original at all).
		if d.Key == "" || d.Reason == "" || (len(d.Request) == 0 && d.RawBase64 == "" && d.Reason != "invalid_request") {
			t.Fatalf("accepted an incomplete dead letter: %+v", d)
		}
		roundTrip(t, d, client.DecodeDeadLetter)
	})
}
