package ratelimit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// This file is the algorithm, free of I/O and of the clock: every function
// takes the time as unix nanoseconds, so tests drive it with explicit times.

// params is Config in the units of the algorithm (nanoseconds, calls/s).
type params struct {
	limit    int
	span     int64 // Window+Guard: at most limit grants in any span
	burst    int
	horizon  int64
	maxRate  float64 // limit/window
	minRate  float64
	decrease float64
	holdoff  int64
	recovery int64
}

// paceCap is the highest sustained rate the window rule allows, calls/s.
func (p params) paceCap() float64 { return float64(p.limit) * 1e9 / float64(p.span) }

// state is the shared value of one quota key.
type state struct {
	// grants holds the most recent grant times (at most limit of them),
	// ascending; some may lie in the future (reservations).
	grants []int64

	// AIMD. decreasedAt == 0 means no decrease is in effect (full rate).
	// After a decrease at D from rate peak, the rate at t is
	//   peak + drop*((t-D-recovery)/recovery)^3
	// clamped to [minRate, maxRate]: drop below peak at D, back at peak
	// after recovery, then rising faster and faster (the TCP CUBIC shape).
	// The curve is stored, not derived from local settings, so that every
	// replica computes the same rate.
	decreasedAt int64
	peak        float64
	drop        float64
	recovery    int64

	// writerLimit and writerSpan are the settings of the replica that wrote
	// the value, to detect replicas configured differently.
	writerLimit int
	writerSpan  int64
}

// coldState is the value written when a key is absent or unreadable. Grants
// made before the loss may lie anywhere up to now+horizon (reservations), so
// the log is filled with limit grants at now+horizon: the first new grant
// then comes no earlier than now+horizon+span, after every old one by a full
// span, and the bound holds across the loss.
func coldState(now int64, p params) state {
	s := state{grants: make([]int64, p.limit)}
	for i := range s.grants {
		s.grants[i] = now + p.horizon
	}
	return s
}

func (s state) clone() state {
	s.grants = append([]int64(nil), s.grants...)
	return s
}

// effectiveRate is the shared adaptive rate at now, in calls per second.
func (s state) effectiveRate(now int64, p params) float64 {
	if s.decreasedAt == 0 || s.recovery <= 0 {
		return p.maxRate
	}
	elapsed := max(now-s.decreasedAt, 0) // a replica whose clock is behind sees the floor
	x := float64(elapsed-s.recovery) / float64(s.recovery)
	r := s.peak + s.drop*x*x*x
	return min(max(r, p.minRate), p.maxRate)
}

// interval is the pacing gap between grants at now, in nanoseconds: burst
// grants per burst/rate, never faster than limit per span, so that grants are
// spread evenly instead of bunching at the start of each span.
func (s state) interval(now int64, p params) int64 {
	rate := min(s.effectiveRate(now, p), p.paceCap())
	return int64(math.Ceil(float64(p.burst) * 1e9 / rate))
}

// earliest returns the earliest time, not before notBefore, at which one more
// grant keeps both rules:
//   - window: at most limit grants in any span (grants[n-limit]+span);
//   - pacing: at most burst grants per burst intervals (grants[n-burst]+interval).
//
// Grants stay in order, so a new grant is never before the last one.
func (s state) earliest(notBefore, now int64, p params) int64 {
	slot := notBefore
	n := len(s.grants)
	if n > 0 {
		slot = max(slot, s.grants[n-1])
	}
	if n >= p.burst {
		slot = max(slot, s.grants[n-p.burst]+s.interval(now, p))
	}
	if n >= p.limit {
		slot = max(slot, s.grants[n-p.limit]+p.span)
	}
	return slot
}

// nthSlot is the slot the n-th of n callers arriving at now would get
// (n >= 1), ignoring the horizon, without changing s.
func (s state) nthSlot(now int64, n int, p params) int64 {
	s = s.clone()
	slot := now
	for range n {
		slot = s.earliest(now, now, p)
		s.grants = append(s.grants, slot)
	}
	return slot
}

// reservation is the outcome of reserve.
type reservation struct {
	// slot is the granted time if ok, else the earliest time a grant could
	// be made (retry at slot-horizon).
	slot int64
	ok   bool
	// recovered reports that reserve cleared a decrease whose curve has
	// reached the maximum rate (the writer logs it, once for the fleet).
	recovered bool
}

// reserve appends a grant at the earliest allowed time not before notBefore
// (>= now), unless that is beyond now+horizon. now is the caller's clock.
func (s *state) reserve(notBefore, now int64, p params) reservation {
	notBefore = max(notBefore, now)
	slot := s.earliest(notBefore, now, p)
	if slot > now+p.horizon {
		return reservation{slot: slot}
	}
	res := reservation{slot: slot, ok: true}
	if s.decreasedAt != 0 && s.effectiveRate(now, p) >= p.maxRate {
		s.decreasedAt, s.peak, s.drop, s.recovery = 0, 0, 0, 0
		res.recovered = true
	}
	s.grants = append(s.grants, slot)
	if extra := len(s.grants) - p.limit; extra > 0 {
		s.grants = append(s.grants[:0], s.grants[extra:]...)
	}
	return res
}

// throttle applies a multiplicative decrease at now, unless one happened less
// than holdoff ago: several replicas reporting one congestion event, and calls
// already reserved at the old rate, must cut the rate once. It reports whether
// the state changed, and the rates before and after.
func (s *state) throttle(now int64, p params) (changed bool, from, to float64) {
	// Decrease from the rate actually in force: pacing never exceeds limit/span.
	from = min(s.effectiveRate(now, p), p.paceCap())
	if s.decreasedAt != 0 && now-s.decreasedAt < p.holdoff {
		return false, from, from
	}
	s.decreasedAt = now
	s.peak = from
	s.drop = from * (1 - p.decrease)
	s.recovery = p.recovery
	return true, from, s.effectiveRate(now, p)
}

// Binary layout of a state value, version 1 (big endian):
//
//	[0]      version = 1
//	[1:3]    writer's limit (uint16)
//	[3:11]   writer's span, ns (int64)
//	[11:19]  decreasedAt, unix ns (int64; 0 = no decrease)
//	[19:27]  peak, calls/s (float64)
//	[27:35]  drop, calls/s (float64)
//	[35:43]  recovery, ns (int64)
//	[43:45]  n (uint16)
//	[45:]    n grant times, unix ns (int64), ascending
const (
	stateVersion    = 1
	stateHeaderSize = 45
)

func (s state) encode(p params) []byte {
	b := make([]byte, 0, stateHeaderSize+8*len(s.grants))
	b = append(b, stateVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(p.limit))
	b = binary.BigEndian.AppendUint64(b, uint64(p.span))
	b = binary.BigEndian.AppendUint64(b, uint64(s.decreasedAt))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(s.peak))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(s.drop))
	b = binary.BigEndian.AppendUint64(b, uint64(s.recovery))
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.grants)))
	for _, g := range s.grants {
		b = binary.BigEndian.AppendUint64(b, uint64(g))
	}
	return b
}

var errBadState = errors.New("ratelimit: unreadable state value")

func decodeState(b []byte) (state, error) {
	if len(b) < stateHeaderSize {
		return state{}, fmt.Errorf("%w: %d bytes", errBadState, len(b))
	}
	if b[0] != stateVersion {
		return state{}, fmt.Errorf("%w: version %d", errBadState, b[0])
	}
	be := binary.BigEndian
	s := state{
		writerLimit: int(be.Uint16(b[1:3])),
		writerSpan:  int64(be.Uint64(b[3:11])),
		decreasedAt: int64(be.Uint64(b[11:19])),
		peak:        math.Float64frombits(be.Uint64(b[19:27])),
		drop:        math.Float64frombits(be.Uint64(b[27:35])),
		recovery:    int64(be.Uint64(b[35:43])),
	}
	n := int(be.Uint16(b[43:45]))
	if len(b) != stateHeaderSize+8*n {
		return state{}, fmt.Errorf("%w: %d bytes for %d grants", errBadState, len(b), n)
	}
	if !(s.peak >= 0 && s.drop >= 0) || math.IsInf(s.peak, 0) || math.IsInf(s.drop, 0) || s.recovery < 0 {
		return state{}, fmt.Errorf("%w: bad rate curve", errBadState)
	}
	s.grants = make([]int64, n)
	for i := range s.grants {
		s.grants[i] = int64(be.Uint64(b[stateHeaderSize+8*i:]))
		if i > 0 && s.grants[i] < s.grants[i-1] {
			return state{}, fmt.Errorf("%w: grants out of order", errBadState)
		}
	}
	return s, nil
}
