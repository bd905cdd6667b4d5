package client

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Priority is a request's lane. The worker fleet gives the next rate-limit
// token to the highest lane with backlog, except that a lower lane below its
// guaranteed minimum share gets it (docs/design.md, "Priority lanes").
type Priority string

// The lanes, highest first.
const (
	PriorityUrgent  Priority = "urgent"
	PriorityNormal  Priority = "normal"
	PriorityRoutine Priority = "routine"
)

// Priorities lists the lanes, highest first.
var Priorities = []Priority{PriorityUrgent, PriorityNormal, PriorityRoutine}

// ParsePriority reads a lane name, case-insensitively; blank is routine.
func ParsePriority(s string) (Priority, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return PriorityRoutine, nil
	}
	for _, p := range Priorities {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("priority must be one of urgent, normal, routine")
}

// Headers of the lanes. The subject decides the lane and the flow (see
// FlowSubject); the client sets the headers too so that a reader of the
// stream sees them without decoding subjects.
const (
	// HeaderPriority is the request's lane (urgent, normal or routine).
	HeaderPriority = "Omicsq-Priority"
	// HeaderFairnessKey is the key the lane is shared fairly by (a lab
	// group, a customer); without it the request's ProjectId is.
	HeaderFairnessKey = "Omicsq-Fairness-Key"
)

// MaxFairnessKeyBytes bounds a fairness key.
const MaxFairnessKeyBytes = 256

// FlowSubject is the subject of requests of lane p shared by fairnessKey:
// <requests subject>.<lane>.<KeyToken(fairnessKey)>. Producers in other
// languages build it the same way (32 hex digits of the key's SHA-256).
// Requests published to the bare requests subject form one flow of the
// routine lane.
func (t Topology) FlowSubject(p Priority, fairnessKey string) string {
	if p == "" {
		p = PriorityRoutine
	}
	return t.RequestsSubject + "." + string(p) + "." + KeyToken(fairnessKey)
}

// FairnessKeyOf returns the key r is shared fairly by within its lane:
// FairnessKey when set, else the body's ProjectId ("" when it has none).
func (r Request) FairnessKeyOf() string {
	if r.FairnessKey != "" {
		return r.FairnessKey
	}
	var b struct{ ProjectId string } //nolint:revive // the API's field name
	_ = json.Unmarshal(r.Body, &b)
	return b.ProjectId
}

// subject is where r is published: the bare requests subject for a request
// that names neither a priority nor a fairness key (exactly as before lanes,
// so producers allowed only that subject keep working), else its flow.
func (c *Client) subject(r Request) string {
	if r.Priority == "" && r.FairnessKey == "" {
		return c.topo.RequestsSubject
	}
	return c.topo.FlowSubject(r.Priority, r.FairnessKeyOf())
}

func validateLane(r Request) error {
	if r.Priority != "" {
		if _, err := ParsePriority(string(r.Priority)); err != nil || strings.ToLower(string(r.Priority)) != string(r.Priority) {
			return &InvalidRequestError{Code: CodeInvalidLane, Field: "priority", Reason: "priority must be one of urgent, normal, routine"}
		}
	}
	if len(r.FairnessKey) > MaxFairnessKeyBytes {
		return &InvalidRequestError{Code: CodeInvalidLane, Field: "fairness_key", Reason: fmt.Sprintf("a fairness key is at most %d bytes", MaxFairnessKeyBytes)}
	}
	return nil
}

// CodeInvalidLane is the InvalidRequestError code of an unknown
// priority or an oversized fairness key.
const CodeInvalidLane = "InvalidLane"
