package console

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// maxEvents bounds the lifecycle events the request page lists: a batch of
// many rows has one per run and status.
const maxEvents = 200

// statusEvents reads key's lifecycle events (its group's and its runs'),
// the newest maxEvents of them oldest first, and whether older ones were
// left out.
func (s *Server) statusEvents(ctx context.Context, key string) ([]client.StatusEvent, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := s.cfg.Topology
	st, err := s.cfg.JS.Stream(ctx, t.StatusStream)
	if err != nil {
		return nil, false, err
	}
	var events []client.StatusEvent
	dropped := false
	err = readOrdered(ctx, st, jetstream.OrderedConsumerConfig{FilterSubjects: []string{t.StatusPrefix + "." + client.KeyToken(key) + ".>"}},
		func(m jetstream.Msg, _ *jetstream.MsgMetadata) bool {
			var ev client.StatusEvent
			if json.Unmarshal(m.Data(), &ev) == nil && ev.Key == key {
				if len(events) == maxEvents {
					events, dropped = events[1:], true
				}
				events = append(events, ev)
			}
			return true
		})
	return events, dropped, err
}
