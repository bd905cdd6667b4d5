package helmcheck

import (
	"strings"
	"testing"
)

// With keda.prometheusServerAddress the ScaledObject also scales on the
// workers' backlog gauges, which count every lane's flows (the
// nats-jetstream trigger reads only the bare subject's shared consumer).
func TestKEDAPrometheusTriggerCountsEveryFlow(t *testing.T) {
	helmBinary(t)
	objs := render(t, []string{ciValues("default-values.yaml")}, "keda.enabled=true",
		"keda.natsServerMonitoringEndpoint=nats:8222", "keda.prometheusServerAddress=http://prometheus:9090")
	sos := find[*scaledObject](objs)
	if len(sos) != 1 {
		t.Fatalf("%d ScaledObjects", len(sos))
	}
	trig := sos[0].Spec.Triggers
	if len(trig) != 2 || trig[0].Type != "nats-jetstream" || trig[1].Type != "prometheus" {
		t.Fatalf("triggers: %+v", trig)
	}
	md := trig[1].Metadata
	if md["serverAddress"] != "http://prometheus:9090" || !strings.Contains(md["query"], "omicsq_consumer_pending_messages") ||
		!strings.Contains(md["query"], "omicsq_consumer_ack_pending_messages") || md["threshold"] != trig[0].Metadata["lagThreshold"] {
		t.Errorf("prometheus trigger: %+v", md)
	}
}
