package helmcheck

import (
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Custom resources have no k8s.io/api types. These structs hold exactly the fields the chart
// may render (checked against the CRDs: prometheus-operator monitoring.coreos.com/v1, KEDA
// keda.sh/v1alpha1, NACK jetstream.nats.io/v1beta2 docs/api.md), so strict decoding rejects
// a misspelled or misplaced field just as it does for built-in kinds.

type relabelConfig struct {
	SourceLabels []string `json:"sourceLabels,omitempty"`
	Separator    string   `json:"separator,omitempty"`
	TargetLabel  string   `json:"targetLabel,omitempty"`
	Regex        string   `json:"regex,omitempty"`
	Modulus      uint64   `json:"modulus,omitempty"`
	Replacement  string   `json:"replacement,omitempty"`
	Action       string   `json:"action,omitempty"`
}

type scrapeEndpoint struct {
	Port              string          `json:"port"`
	Path              string          `json:"path"`
	Interval          string          `json:"interval"`
	ScrapeTimeout     string          `json:"scrapeTimeout"`
	HonorLabels       bool            `json:"honorLabels"`
	Relabelings       []relabelConfig `json:"relabelings,omitempty"`
	MetricRelabelings []relabelConfig `json:"metricRelabelings,omitempty"`
}

type namespaceSelector struct {
	MatchNames []string `json:"matchNames"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector namespaceSelector    `json:"namespaceSelector"`
		Selector          metav1.LabelSelector `json:"selector"`
		Endpoints         []scrapeEndpoint     `json:"endpoints"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector   namespaceSelector    `json:"namespaceSelector"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []scrapeEndpoint     `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// rule is one Prometheus rule, as in a rules file and in a PrometheusRule.
type rule struct {
	Alert         string            `json:"alert,omitempty"`
	Record        string            `json:"record,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type ruleGroup struct {
	Name        string `json:"name"`
	Interval    string `json:"interval,omitempty"`
	QueryOffset string `json:"query_offset,omitempty"`
	Limit       int    `json:"limit,omitempty"`
	Rules       []rule `json:"rules"`
}

// rulesFile is a plain Prometheus rules file (files/alerts.rules.yaml).
type rulesFile struct {
	Groups []ruleGroup `json:"groups"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              rulesFile `json:"spec"`
}

type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		Fallback        *struct {
			FailureThreshold int32 `json:"failureThreshold"`
			Replicas         int32 `json:"replicas"`
		} `json:"fallback,omitempty"`
		Advanced *struct {
			HorizontalPodAutoscalerConfig struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type string `json:"type"`
			// KEDA requires every metadata value to be a string: a map of strings
			// makes a bare number or boolean a decoding error.
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
			} `json:"authenticationRef,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

type triggerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretTargetRef []struct {
			Parameter string `json:"parameter"`
			Name      string `json:"name"`
			Key       string `json:"key"`
		} `json:"secretTargetRef"`
	} `json:"spec"`
}

type nackCommon struct {
	Account       string `json:"account,omitempty"`
	PreventDelete bool   `json:"preventDelete"`
	PreventUpdate bool   `json:"preventUpdate"`
}

type nackStream struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		nackCommon        `json:",inline"`
		Name              string   `json:"name"`
		Description       string   `json:"description"`
		Subjects          []string `json:"subjects"`
		Retention         string   `json:"retention"`
		Discard           string   `json:"discard,omitempty"`
		DiscardPerSubject bool     `json:"discardPerSubject,omitempty"`
		MaxMsgsPerSubject int64    `json:"maxMsgsPerSubject,omitempty"`
		MaxAge            string   `json:"maxAge"`
		MaxMsgSize        int32    `json:"maxMsgSize,omitempty"`
		Storage           string   `json:"storage"`
		Replicas          int      `json:"replicas"`
		DuplicateWindow   string   `json:"duplicateWindow,omitempty"`
		AllowDirect       bool     `json:"allowDirect,omitempty"`
	} `json:"spec"`
}

type nackConsumer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		nackCommon    `json:",inline"`
		StreamName    string `json:"streamName"`
		DurableName   string `json:"durableName"`
		Description   string `json:"description,omitempty"`
		DeliverPolicy string `json:"deliverPolicy"`
		AckPolicy     string `json:"ackPolicy"`
		AckWait       string `json:"ackWait"`
		MaxDeliver    int    `json:"maxDeliver,omitempty"`
		MaxAckPending int    `json:"maxAckPending,omitempty"`
		MaxWaiting    int    `json:"maxWaiting,omitempty"`
		FilterSubject string `json:"filterSubject,omitempty"`
		Replicas      int    `json:"replicas"`
	} `json:"spec"`
}

type nackKeyValue struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		nackCommon  `json:",inline"`
		Bucket      string `json:"bucket"`
		Description string `json:"description"`
		History     int    `json:"history"`
		TTL         string `json:"ttl,omitempty"`
		Storage     string `json:"storage"`
		Replicas    int    `json:"replicas"`
	} `json:"spec"`
}
