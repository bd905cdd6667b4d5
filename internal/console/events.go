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
// oldest first, and whether there were more than maxEvents.
func (s *Server) statusEvents(ctx context.Context, key string) ([]client.StatusEvent, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := s.cfg.Topology
	st, err := s.cfg.JS.Stream(ctx, t.StatusStream)
	if err != nil {
		return nil, false, err
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{t.StatusPrefix + "." + client.KeyToken(key) + ".>"}})
	if err != nil {
		return nil, false, err
	}
	var events []client.StatusEvent
	for len(events) < maxEvents {
		batch, err := cons.FetchNoWait(50)
		if err != nil {
			return events, false, err
		}
		got, last := 0, false
		for m := range batch.Messages() {
			got++
			var ev client.StatusEvent
			if json.Unmarshal(m.Data(), &ev) == nil && ev.Key == key {
				events = append(events, ev)
			}
			if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
				last = true
			}
		}
		if got == 0 || last {
			return events, false, nil
		}
	}
	return events, true, nil
}
