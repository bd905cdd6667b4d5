package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// LatestStatus returns the newest run-group status event of key, or ok=false
// when the tracker has published none (yet).
func (c *Client) LatestStatus(ctx context.Context, key string) (e StatusEvent, ok bool, err error) {
	s, err := c.js.Stream(ctx, c.topo.StatusStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return StatusEvent{}, false, nil // no tracker has run: no status yet
	}
	if err != nil {
		return StatusEvent{}, false, fmt.Errorf("stream %s: %w", c.topo.StatusStream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, c.topo.StatusGroupSubject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return StatusEvent{}, false, nil
	}
	if err != nil {
		return StatusEvent{}, false, fmt.Errorf("status of a key: %w", err)
	}
	if err := json.Unmarshal(m.Data, &e); err != nil {
		return StatusEvent{}, false, fmt.Errorf("decode status event: %w", err)
	}
	return e, true, nil
}

// StatusWatcher follows the run-group status events of a set of keys.
type StatusWatcher struct {
	out    chan StatusEvent
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Events delivers each key's current status (its newest stored event) and
// then every later change, and is closed once every key has had its
// terminal event, or when the watch stops.
func (w *StatusWatcher) Events() <-chan StatusEvent { return w.out }

// Stop ends the watch and waits for its goroutines.
func (w *StatusWatcher) Stop() {
	w.cancel()
	w.wg.Wait()
}

// WatchStatus follows the run groups of keys to their terminal status. It
// starts a consumer at the status stream's end, then reads each key's newest
// stored event, so no terminal event is missed whenever it starts; a key's
// events are delivered in stream order (an intermediate status may be
// skipped when a newer one is read first), and none after its terminal one.
func (c *Client) WatchStatus(ctx context.Context, keys []string) (*StatusWatcher, error) {
	s, err := c.js.Stream(ctx, c.topo.StatusStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s not found: no worker with the run tracker (--tracker) has provisioned it", c.topo.StatusStream)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", c.topo.StatusStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", c.topo.StatusStream, err)
	}
	tokens := make(map[string]string, len(keys))
	for _, k := range keys {
		tokens[KeyToken(k)] = k
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &StatusWatcher{out: make(chan StatusEvent, 64), cancel: cancel}
	raw := make(chan seqEvent, 256)
	send := func(e seqEvent) {
		select {
		case raw <- e:
		case <-wctx.Done():
		}
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.topo.StatusPrefix + ".*.group"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    info.State.LastSeq + 1,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s: %w", c.topo.StatusStream, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		token := strings.TrimSuffix(strings.TrimPrefix(m.Subject(), c.topo.StatusPrefix+"."), ".group")
		md, merr := m.Metadata()
		var e StatusEvent
		if _, ok := tokens[token]; !ok || merr != nil || json.Unmarshal(m.Data(), &e) != nil {
			return
		}
		send(seqEvent{seq: md.Sequence.Stream, e: e})
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s: %w", c.topo.StatusStream, err)
	}
	w.wg.Go(func() {
		<-wctx.Done()
		cc.Stop()
	})
	w.wg.Go(func() { dispatchStatus(wctx, keys, raw, w.out, cancel) })
	// Read concurrently with dispatch: Events is not read before
	// WatchStatus returns, and many keys' stored events exceed the buffers.
	w.wg.Go(func() { readLatest(wctx, s, c.topo, keys, send) })
	return w, nil
}

// readLatest sends each key's newest stored group event, a few keys at a
// time.
func readLatest(ctx context.Context, s jetstream.Stream, t Topology, keys []string, send func(seqEvent)) {
	eachKey(ctx, keys, 8, func(k string) {
		m, err := s.GetLastMsgForSubject(ctx, t.StatusGroupSubject(k))
		var e StatusEvent
		if err == nil && json.Unmarshal(m.Data, &e) == nil {
			send(seqEvent{seq: m.Sequence, e: e})
		}
	})
}

type seqEvent struct {
	seq uint64
	e   StatusEvent
}

// dispatchStatus forwards events in stream order per key, dropping any at
// or before the key's last forwarded one (the stored read and the consumer
// may both deliver it), and closes out when every key is terminal.
func dispatchStatus(ctx context.Context, keys []string, raw <-chan seqEvent, out chan<- StatusEvent, done context.CancelFunc) {
	defer close(out)
	defer done()
	last := make(map[string]uint64, len(keys))
	open := map[string]bool{}
	for _, k := range keys {
		open[k] = true
	}
	for len(open) > 0 {
		var se seqEvent
		select {
		case se = <-raw:
		case <-ctx.Done():
			return
		}
		k := se.e.Key
		if !open[k] || se.seq <= last[k] {
			continue
		}
		last[k] = se.seq
		if se.e.Terminal {
			delete(open, k)
		}
		select {
		case out <- se.e:
		case <-ctx.Done():
			return
		}
	}
}
