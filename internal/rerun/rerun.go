// Package rerun retries failed run groups with RetryRuns, once per request
// and key at a time, with the submission ledger's discipline: RetryRuns has
// no idempotency token, so an intent is recorded (compare-and-set) before
// every call, an ambiguous outcome is reconciled by looking the new group up
// by Name before anything is called again, and "not found" is believed only
// once the lookup horizon has passed. A group created is then followed by
// the run tracker: the key's runs entry is rewritten to name it. The CLI
// (enqueue runs retry) and the workers' auto-retry policy share the one
// procedure, Retrier.Retry. docs/lifecycle.md, "Retrying failed runs", is
// the contract.
package rerun

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
)

// Defaults of Config.
const (
	DefaultHorizon       = 5 * time.Minute
	DefaultLookupInitial = time.Second
	DefaultLookupMax     = 30 * time.Second
	DefaultLeaseTTL      = 2 * time.Minute
	DefaultMaxCalls      = 3
)

// API is the part of the Omics client a retry calls; *submit.Client.
type API interface {
	DescribeRunGroups(ctx context.Context, req *submit.DescribeRunGroupsRequest) (*submit.DescribeRunGroupsResponse, error)
	FindRunGroupsByName(ctx context.Context, projectID *string, name string, beforePage func(context.Context) error) ([]submit.RunGroup, error)
	RetryRuns(ctx context.Context, req *submit.RetryRunsRequest) (*submit.RetryRunsResponse, error)
}

// Config configures a Retrier.
type Config struct {
	// JS and Topology name the runs and retries buckets.
	JS       jetstream.JetStream
	Topology queue.Topology
	API      API
	// RetryLimiter gives RetryRuns calls their tokens, DescribeLimiter the
	// lookups' (one per page); nil: none.
	RetryLimiter, DescribeLimiter queue.Limiter
	// Horizon is how long a created group may take to become visible to
	// DescribeRunGroups (the worker's --lookup-horizon). Default
	// DefaultHorizon.
	Horizon time.Duration
	// LookupInitial and LookupMax bound the delays between lookups while
	// the horizon runs (doubling, jittered).
	LookupInitial, LookupMax time.Duration
	// LeaseTTL is how long a holder's claim on a key's record lasts without
	// a write; it must exceed the API timeout and LookupMax.
	LeaseTTL time.Duration
	// MaxCalls bounds the RetryRuns calls of one attempt (each after the
	// previous one's horizon passed with nothing found). Default
	// DefaultMaxCalls.
	MaxCalls int
	// Holder names this process in the records (a random suffix is added,
	// so two processes never take each other's claim for their own).
	Holder string
	// BatchCancelled reports whether a batch was cancelled (the workers'
	// batch gate); a cancelled batch's groups are not retried. Nil: none.
	BatchCancelled func(ctx context.Context, batch string) bool
	Log            *slog.Logger
	Now            func() time.Time
}

// Retrier retries the failed run groups of keys. It is safe for concurrent
// use; the records serialise work on one key across processes.
type Retrier struct {
	cfg          Config
	runs, record jetstream.KeyValue
	holder       string
	log          *slog.Logger
	now          func() time.Time
	inProcess    sync.Map // key tokens being retried by this process
}

// New binds the runs and retries buckets.
func New(ctx context.Context, cfg Config) (*Retrier, error) {
	if cfg.JS == nil || cfg.API == nil {
		return nil, errors.New("rerun: JS and API are required")
	}
	runs, err := cfg.JS.KeyValue(ctx, cfg.Topology.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", cfg.Topology.RunsBucket, err)
	}
	rec, err := cfg.JS.KeyValue(ctx, cfg.Topology.RetriesBucket)
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", cfg.Topology.RetriesBucket, err)
	}
	cfg.Horizon = or(cfg.Horizon, DefaultHorizon)
	cfg.LookupInitial = or(cfg.LookupInitial, DefaultLookupInitial)
	cfg.LookupMax = or(cfg.LookupMax, DefaultLookupMax)
	cfg.LeaseTTL = or(cfg.LeaseTTL, DefaultLeaseTTL)
	cfg.MaxCalls = or(cfg.MaxCalls, DefaultMaxCalls)
	r := &Retrier{cfg: cfg, runs: runs, record: rec, log: cfg.Log, now: cfg.Now}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("component", "rerun")
	if r.now == nil {
		r.now = time.Now
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	r.holder = or(cfg.Holder, "omicsq") + "/" + hex.EncodeToString(b[:])
	return r, nil
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Options are one retry's choices.
type Options struct {
	// Trigger is TriggerManual or TriggerAuto; By names who asked.
	Trigger, By string
	// CallCache turns UseCallCache on for a WDL group (its options are
	// read and sent back with it; a Nextflow group keeps its own).
	CallCache bool
	// MaxRetries refuses a retry once the key's retries created this many
	// groups (0: no bound).
	MaxRetries int
	// ExpectGroup refuses a retry unless the key's current run group is
	// this one: an event about a group already retried is stale.
	ExpectGroup string
	// Progress, when not nil, is told when a retry waits for a lookup
	// (ambiguous outcome), so a command can say why it takes long.
	Progress func(key, note string)
}

// Kind is how a retry ended.
type Kind string

// Kinds of Outcome.
const (
	// KindCreated: RetryRuns answered with the new group.
	KindCreated Kind = "created"
	// KindFound: a call's outcome was ambiguous and the new group was
	// found by Name afterwards.
	KindFound Kind = "found"
	// KindAlready: an earlier attempt had created a group from the key's
	// current group; it is followed now, and nothing was called.
	KindAlready Kind = "already"
	// KindRefused: nothing to retry, or the API refused; nothing created.
	KindRefused Kind = "refused"
	// KindBusy: another process is retrying the key.
	KindBusy Kind = "busy"
	// KindUnresolved: stopped (the context ended, or lookups failed) while
	// a group may exist; retrying the key again goes on from the record.
	KindUnresolved Kind = "unresolved"
)

// Reasons of a refusal that is not the API's.
const (
	ReasonNotTracked        = "not_tracked"        // no runs entry: no result yet, or no tracker
	ReasonNotEnded          = "not_ended"          // the group has not reached a terminal status
	ReasonSucceeded         = "succeeded"          // nothing failed
	ReasonProjectUnresolved = "project_unresolved" // the tracker could not tell the group's project
	ReasonLimit             = "limit_reached"      // MaxRetries groups were created already
	ReasonStale             = "stale"              // the key's group is not Options.ExpectGroup
	ReasonAPI               = "api_refused"        // the API refused RetryRuns (Code)
	ReasonNothingVisible    = "nothing_visible"    // MaxCalls calls, none visible within the horizon
	ReasonBatchCancelled    = "batch_cancelled"    // the key's batch was cancelled: its groups are stopped, not rerun
	ReasonTerminated        = "terminated"         // auto-retry: a group somebody stopped is not rerun by policy
)

// Outcome is what a retry of one key did. It holds no request values.
type Outcome struct {
	Key         string
	Kind        Kind
	SourceGroup string
	NewGroup    string
	// Reason explains KindRefused (a Reason* constant), KindBusy (the
	// holder) and KindUnresolved; Code is the API's error code.
	Reason, Code string
	// Status is the source group's last status, for a refusal.
	Status string
	// Attempt is the attempt's number in the key's record.
	Attempt int
}
