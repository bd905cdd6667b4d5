// Package lanes decides which flow of requests gets the fleet's next
// rate-limit token: strict priority between lanes with a guaranteed minimum
// share for the lower ones, and stride scheduling by weight between the
// flows (fairness keys) of a lane. The rule (Pick) is a pure function of the
// shared State, the backlog and the Config; Shared keeps the State in a
// JetStream KV key updated by compare-and-set, so the fleet makes one global
// decision per token whatever replica makes it.
package lanes

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/omicsq/omicsq/client"
)

// Lanes is how many lanes there are; lane 0 is the highest.
const Lanes = 3

// LaneIndex maps a priority to its lane (0 urgent, 1 normal, 2 routine),
// or -1 for an unknown one.
func LaneIndex(p client.Priority) int { return slices.Index(client.Priorities, p) }

// Flow is one lane's requests that share a fairness key: the subject
// <requests subject>.<lane>.<token>, or the bare requests subject (the
// routine lane, Token "").
type Flow struct {
	Lane  int
	Token string
}

// Priority is the flow's lane as a client.Priority.
func (f Flow) Priority() client.Priority { return client.Priorities[f.Lane] }

func (f Flow) id() string { return fmt.Sprintf("%d/%s", f.Lane, f.Token) }

// Config is the scheduling policy. Every replica of a fleet must use the
// same one (they share the State).
type Config struct {
	// MinShare[l] is the share of the last Window tokens that lane l is
	// guaranteed while it has backlog (0 to 1; MinShare[0] is unused, the
	// top lane needs none). Default normal 0.10, routine 0.05.
	MinShare [Lanes]float64
	// Window is how many of the fleet's last tokens the shares are counted
	// over. Default 100 (5 s at 20 calls/s).
	Window int
	// Weights are the fairness keys' weights by token (client.KeyToken of
	// the key); keys not listed have DefaultWeight.
	Weights map[string]float64
	// DefaultWeight is the weight of a key not in Weights. Default 1.
	DefaultWeight float64
}

// DefaultConfig is the documented default policy.
func DefaultConfig() Config {
	return Config{MinShare: [Lanes]float64{0, 0.10, 0.05}, Window: 100, DefaultWeight: 1}
}

// Validate names the settings out of range.
func (c Config) Validate() error {
	sum := 0.0
	for l := 1; l < Lanes; l++ {
		if c.MinShare[l] < 0 || c.MinShare[l] > 1 {
			return fmt.Errorf("the %s lane's minimum share must be between 0 and 1", client.Priorities[l])
		}
		sum += c.MinShare[l]
	}
	if sum >= 1 {
		return fmt.Errorf("the lower lanes' minimum shares must add up to less than 1")
	}
	if c.Window < 1 || c.Window > 10000 {
		return fmt.Errorf("the share window must be 1 to 10000 tokens")
	}
	if c.DefaultWeight <= 0 {
		return fmt.Errorf("the default fairness weight must be positive")
	}
	for _, w := range c.Weights {
		if w <= 0 {
			return fmt.Errorf("fairness weights must be positive")
		}
	}
	return nil
}

func (c Config) weight(token string) float64 {
	if w, ok := c.Weights[token]; ok {
		return w
	}
	return c.DefaultWeight
}

// State is what the fleet remembers between decisions.
type State struct {
	// Recent holds the lanes of the last Window tokens, oldest first.
	Recent []byte `json:"r"`
	// Pass is each backlogged flow's stride pass: the virtual time at which
	// it is next due. A flow's pass grows by 1/weight per token it gets.
	Pass map[string]float64 `json:"p"`
	// Virtual is each lane's virtual time: the pass of the flow it served
	// last. A flow that joins (or rejoins) starts there, so idleness earns
	// no credit.
	Virtual [Lanes]float64 `json:"v"`
}

// share is lane l's fraction of the last window tokens.
func (s *State) share(l, window int) float64 {
	n := 0
	for _, r := range s.Recent {
		if int(r) == l {
			n++
		}
	}
	return float64(n) / float64(window)
}

// Pick chooses the flow that gets the next token and records the choice in
// st. backlog holds every flow's fetchable messages; flows with none are
// skipped (work-conserving). It reports false when no flow has backlog.
//
// The rule, exactly:
//  1. Lanes with backlog are candidates. The token goes to the highest,
//     unless a lower candidate lane's share of the last Window tokens is
//     below its MinShare: then it goes to the highest such lane.
//  2. Within the lane, it goes to the backlogged flow with the smallest
//     pass, where a flow without a pass, or with one below the lane's
//     virtual time, is at the virtual time (ties: the smaller token). The
//     lane's virtual time becomes that pass, and the flow's pass grows by
//     1/weight.
//  3. Passes below their lane's virtual time are forgotten (the flow
//     would start at the virtual time anyway), so the State holds only the
//     flows served within the last round of each lane.
func Pick(st *State, backlog map[Flow]uint64, cfg Config) (Flow, bool) {
	var byLane [Lanes][]Flow
	for f, n := range backlog {
		if n > 0 && f.Lane >= 0 && f.Lane < Lanes {
			byLane[f.Lane] = append(byLane[f.Lane], f)
		}
	}
	lane := -1
	for l := range Lanes {
		if len(byLane[l]) == 0 {
			continue
		}
		if lane < 0 {
			lane = l
			continue
		}
		if st.share(l, cfg.Window) < cfg.MinShare[l] {
			lane = l
			break
		}
	}
	if lane < 0 {
		return Flow{}, false
	}
	if st.Pass == nil {
		st.Pass = map[string]float64{}
	}
	vt := st.Virtual[lane]
	pass := func(f Flow) float64 {
		if p, ok := st.Pass[f.id()]; ok && p >= vt {
			return p
		}
		return vt
	}
	flows := byLane[lane]
	best := slices.MinFunc(flows, func(a, b Flow) int {
		return cmp.Or(cmp.Compare(pass(a), pass(b)), cmp.Compare(a.Token, b.Token))
	})
	p := pass(best)
	st.Virtual[lane] = p
	st.Pass[best.id()] = p + 1/cfg.weight(best.Token)
	// Forget the passes below their lane's virtual time: such a flow would
	// start at the virtual time anyway. A pass above it (a flow served
	// lately) is kept even while its flow shows no backlog, so that a flow
	// missing from one replica's stale view earns nothing by it.
	for id, q := range st.Pass {
		var l int
		if _, err := fmt.Sscanf(id, "%d/", &l); err != nil || l < 0 || l >= Lanes || q < st.Virtual[l] {
			delete(st.Pass, id)
		}
	}
	capPasses(st)
	st.Recent = append(st.Recent, byte(lane))
	if over := len(st.Recent) - cfg.Window; over > 0 {
		st.Recent = slices.Delete(st.Recent, 0, over)
	}
	return best, true
}

// MaxPasses bounds the passes the State keeps, so that its one KV value
// stays far below NATS's message size (about 40 bytes a pass: 4,096 is
// some 160 KB) however many fairness keys producers use.
const MaxPasses = 4096

// capPasses forgets, past MaxPasses, the passes nearest their lane's
// virtual time: such a flow would start there anyway, so forgetting it
// gives it the least credit.
func capPasses(st *State) {
	over := len(st.Pass) - MaxPasses
	if over <= 0 {
		return
	}
	type ahead struct {
		id string
		by float64
	}
	all := make([]ahead, 0, len(st.Pass))
	for id, q := range st.Pass {
		var l int
		_, _ = fmt.Sscanf(id, "%d/", &l)
		all = append(all, ahead{id, q - st.Virtual[min(max(l, 0), Lanes-1)]})
	}
	slices.SortFunc(all, func(a, b ahead) int { return cmp.Or(cmp.Compare(a.by, b.by), cmp.Compare(a.id, b.id)) })
	for _, a := range all[:over] {
		delete(st.Pass, a.id)
	}
}
