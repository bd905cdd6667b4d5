package client_test

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
)

// A request without priority and fairness key goes to the bare subject, as
// before lanes; one with either goes to its flow's subject
// (<subject>.<lane>.<KeyToken(fairness key or ProjectId)>) with the headers.
func TestPublishPicksTheFlowSubject(t *testing.T) {
	ctx := t.Context()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	topo := client.DefaultTopology()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topo.RequestsStream, Subjects: []string{topo.RequestsSubject, topo.RequestsSubject + ".>"}})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(js)
	body := []byte(`{"ApplicationId":"a","EnvironmentId":"e","Name":"n","ProjectId":"proj-1","InputBase64":"e30K"}`)
	cases := []struct {
		r           client.Request
		subject     string
		prio, fkHdr string
	}{
		{client.Request{Key: "k1", Body: body}, "omicsq.requests", "", ""},
		{client.Request{Key: "k2", Body: body, Priority: client.PriorityUrgent}, "omicsq.requests.urgent." + client.KeyToken("proj-1"), "urgent", ""},
		{client.Request{Key: "k3", Body: body, FairnessKey: "lab-a"}, "omicsq.requests.routine." + client.KeyToken("lab-a"), "routine", "lab-a"},
	}
	for _, tc := range cases {
		p, err := c.Publish(ctx, tc.r)
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetMsg(ctx, p.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != tc.subject || m.Header.Get(client.HeaderPriority) != tc.prio || m.Header.Get(client.HeaderFairnessKey) != tc.fkHdr {
			t.Errorf("%s: subject %s priority %q fairness %q; want %s %q %q", tc.r.Key, m.Subject,
				m.Header.Get(client.HeaderPriority), m.Header.Get(client.HeaderFairnessKey), tc.subject, tc.prio, tc.fkHdr)
		}
	}
	if _, err := c.Publish(ctx, client.Request{Key: "k4", Body: body, Priority: "URGENT!"}); err == nil {
		t.Error("an unknown priority was published")
	}
	if _, err := client.ParsePriority("Normal"); err != nil {
		t.Error(err)
	}
}
