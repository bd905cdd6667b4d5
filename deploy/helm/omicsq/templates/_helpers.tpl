{{/* vim: set filetype=mustache: */}}

{{/* Chart name, overridable. */}}
{{- define "omicsq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart name.
Truncated to 63 characters (DNS label limit).
*/}}
{{- define "omicsq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "omicsq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Namespace of namespaced objects. */}}
{{- define "omicsq.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries (no component). */}}
{{- define "omicsq.commonLabels" -}}
helm.sh/chart: {{ include "omicsq.chart" . }}
app.kubernetes.io/name: {{ include "omicsq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: omicsq
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the worker pods. The component keeps the helm test pod (component "test")
out of the Service, the PodMonitor and the PDB. Never change them: selectors are immutable.
*/}}
{{- define "omicsq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "omicsq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels of the worker's objects. */}}
{{- define "omicsq.labels" -}}
{{ include "omicsq.commonLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "omicsq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "omicsq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: [registry/]repository[:tag][@digest]; the tag defaults to appVersion. */}}
{{- define "omicsq.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .Values.image.registry) $repo }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
A value as an environment string. Helm decodes YAML numbers as float64, which toString would
print in exponent form from 1e6 (1048576 -> "1.048576e+06"); whole numbers print as integers.
*/}}
{{- define "omicsq.str" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Seconds in a Go duration string (25s, 1m30s, 500ms, 1.5h), as a float. Fails on anything
else, so a typo cannot silently become a zero grace period.
*/}}
{{- define "omicsq.durationSeconds" -}}
{{- $d := toString . }}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$" $d) }}
{{- fail (printf "%q is not a Go duration such as 25s, 1m30s or 500ms" $d) }}
{{- end }}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" $d -1 }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $part }}
{{- $unit := trimPrefix $num $part }}
{{- $total = addf $total (mulf (float64 $num) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
terminationGracePeriodSeconds = ceil(shutdown.drainTimeout) + shutdown.gracePeriodMarginSeconds.
The kubelet sends SIGTERM, waits this long, then SIGKILLs: the worker's drain (in-flight
messages finish or are released) plus its closing steps must fit inside.
*/}}
{{- define "omicsq.terminationGracePeriodSeconds" -}}
{{- $drain := include "omicsq.durationSeconds" .Values.shutdown.drainTimeout | float64 }}
{{- add (ceil $drain | int64) (int64 .Values.shutdown.gracePeriodMarginSeconds) }}
{{- end }}

{{/* METRICS_ADDR: host:port, IPv6 hosts bracketed. */}}
{{- define "omicsq.metricsAddr" -}}
{{- $host := toString .Values.metrics.host }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/*
The worker's non-secret environment, as a YAML map of strings: the first-class values, then
.Values.config on top. The ConfigMap renders it; KEDA, NACK and NOTES read names from it, so
an override in config reaches them too.
*/}}
{{- define "omicsq.env" -}}
{{- $v := .Values }}
{{- $env := dict
  "NATS_URL" $v.nats.url
  "TENCENTCLOUD_REGION" $v.tencentcloud.region
  "OMICS_ENDPOINT" $v.tencentcloud.endpoint
  "OMICSQ_API_TIMEOUT" $v.tencentcloud.apiTimeout
  "OMICSQ_CONCURRENCY" $v.worker.concurrency
  "OMICSQ_RATE" $v.rateLimit.rate
  "OMICSQ_BURST" $v.rateLimit.burst
  "OMICSQ_RATE_LIMIT_SCOPE" $v.rateLimit.scope
  "OMICSQ_PROVISION" $v.jetstream.provision
  "OMICSQ_STREAM_REPLICAS" $v.jetstream.streamReplicas
  "OMICSQ_REQUESTS_STREAM" $v.jetstream.requestsStream
  "OMICSQ_REQUESTS_SUBJECT" $v.jetstream.requestsSubject
  "OMICSQ_CONSUMER" $v.jetstream.consumer
  "OMICSQ_LANES" (toString $v.jetstream.lanes)
  "OMICSQ_RESULTS_STREAM" $v.jetstream.resultsStream
  "OMICSQ_RESULTS_PREFIX" $v.jetstream.resultsPrefix
  "OMICSQ_DLQ_STREAM" $v.jetstream.dlqStream
  "OMICSQ_DLQ_PREFIX" $v.jetstream.dlqPrefix
  "OMICSQ_ADVISORY_STREAM" $v.jetstream.advisoryStream
  "OMICSQ_LEDGER_BUCKET" $v.jetstream.ledgerBucket
  "OMICSQ_CONTROL_BUCKET" $v.jetstream.controlBucket
  "OMICSQ_BREAKER_BUCKET" $v.jetstream.breakerBucket
  "OMICSQ_STATUS_STREAM" $v.jetstream.statusStream
  "OMICSQ_STATUS_PREFIX" $v.jetstream.statusPrefix
  "OMICSQ_RUNS_BUCKET" $v.jetstream.runsBucket
  "OMICSQ_TRACKER_CONSUMER" $v.jetstream.trackerConsumer
  "OMICSQ_REQUESTS_MAX_AGE" $v.jetstream.requestsMaxAge
  "OMICSQ_RESULTS_MAX_AGE" $v.jetstream.resultsMaxAge
  "OMICSQ_DLQ_MAX_AGE" $v.jetstream.dlqMaxAge
  "OMICSQ_LEDGER_TTL" $v.jetstream.ledgerTtl
  "OMICSQ_DUPLICATE_WINDOW" $v.jetstream.duplicateWindow
  "OMICSQ_ACK_WAIT" $v.jetstream.ackWait
  "OMICSQ_MAX_DELIVER" $v.jetstream.maxDeliver
  "OMICSQ_MAX_ACK_PENDING" $v.jetstream.maxAckPending
  "OMICSQ_DRAIN_TIMEOUT" $v.shutdown.drainTimeout
  "METRICS_ADDR" (include "omicsq.metricsAddr" .)
  "LOG_FORMAT" $v.logging.format
  "LOG_LEVEL" $v.logging.level
}}
{{- range $k, $val := $v.config }}
{{- $_ := set $env $k $val }}
{{- end }}
{{- $out := dict }}
{{- range $k, $val := $env }}
{{- $_ := set $out $k (include "omicsq.str" $val) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Render-time checks with messages that say what to do. Included by the Deployment, so any
render (install, upgrade, template, lint) runs them.
*/}}
{{- define "omicsq.validate" -}}
{{- $v := .Values }}
{{- if not $v.nats.url }}
{{- fail "nats.url is required (e.g. nats://nats.nats.svc.cluster.local:4222): with an empty URL the worker would start an embedded single-node JetStream server inside the pod" }}
{{- end }}
{{- if and (ne $v.nats.auth.type "none") (not $v.nats.auth.existingSecret) }}
{{- fail (printf "nats.auth.existingSecret is required for nats.auth.type %s" $v.nats.auth.type) }}
{{- end }}
{{- if and $v.nats.tls.ca.secretName $v.nats.tls.ca.configMapName }}
{{- fail "nats.tls.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- $cred := $v.tencentcloud.credentials }}
{{- if and (eq $cred.source "secret") (not $cred.existingSecret) }}
{{- fail "tencentcloud.credentials.existingSecret is required for source secret (a Secret with the SecretId and SecretKey); or use source workloadIdentity" }}
{{- end }}
{{- if eq $cred.source "workloadIdentity" }}
{{- if not $cred.workloadIdentity.roleArn }}
{{- fail "tencentcloud.credentials.workloadIdentity.roleArn is required for source workloadIdentity" }}
{{- end }}
{{- if and (eq $cred.workloadIdentity.mode "explicit") (not $cred.workloadIdentity.providerId) }}
{{- fail "tencentcloud.credentials.workloadIdentity.providerId is required for workloadIdentity mode explicit" }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled $v.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: KEDA creates its own HPA for the Deployment, and two HPAs would fight over replicas" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled $v.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are mutually exclusive: both would scrape every pod twice" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs service.enabled (or use metrics.podMonitor)" }}
{{- end }}
{{- if $v.keda.enabled }}
{{- $ta := $v.keda.triggerAuthentication }}
{{- if and $ta.enabled (not $ta.secretName) }}
{{- fail "keda.triggerAuthentication.secretName is required when keda.triggerAuthentication.enabled" }}
{{- end }}
{{- if and $ta.enabled (not (or $ta.endpointKey $ta.accountKey $ta.accountIdKey)) }}
{{- fail "keda.triggerAuthentication needs at least one of endpointKey, accountKey, accountIdKey" }}
{{- end }}
{{- if and (not $v.keda.natsServerMonitoringEndpoint) (not (and $ta.enabled $ta.endpointKey)) }}
{{- fail "keda.natsServerMonitoringEndpoint is required (host:port of the NATS monitoring port; the headless service for a cluster), or keda.triggerAuthentication with endpointKey" }}
{{- end }}
{{- if and $v.jetstream.lanes (not $v.keda.prometheusServerAddress) }}
{{- fail "keda.prometheusServerAddress: with priority lanes on (jetstream.lanes) the nats-jetstream trigger sees only the bare subject's consumer, so requests with a priority or fairness key would not scale the fleet (at minReplicaCount 0 they would wait for ever); set the Prometheus URL, or jetstream.lanes=false" }}
{{- end }}
{{- if gt (int $v.keda.minReplicaCount) (int $v.keda.maxReplicaCount) }}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.nack.enabled $v.jetstream.provision }}
{{- fail "nack.enabled needs jetstream.provision=false: NACK reverts any change the worker makes to resources it manages, so exactly one of them may own the streams" }}
{{- end }}
{{- range $k, $_ := $v.config }}
{{- if regexMatch "(SECRET|PASSWORD|_TOKEN$)" $k }}
{{- fail (printf "config.%s looks like secret material and would land in a ConfigMap: use the Secret-backed values (nats.auth, tencentcloud.credentials) or extraEnv with valueFrom.secretKeyRef" $k) }}
{{- end }}
{{- end }}
{{- $_ := include "omicsq.terminationGracePeriodSeconds" . }}
{{- end }}

{{/*
Secrets the pods read, as a list of names (for the rollout checksum).
*/}}
{{- define "omicsq.referencedSecrets" -}}
{{- $v := .Values }}
{{- $names := list }}
{{- if ne $v.nats.auth.type "none" }}{{ $names = append $names $v.nats.auth.existingSecret }}{{ end }}
{{- with $v.nats.tls.ca.secretName }}{{ $names = append $names . }}{{ end }}
{{- with $v.nats.tls.clientCert.secretName }}{{ $names = append $names . }}{{ end }}
{{- if eq $v.tencentcloud.credentials.source "secret" }}{{ $names = append $names $v.tencentcloud.credentials.existingSecret }}{{ end }}
{{- toJson (uniq $names) }}
{{- end }}

{{/*
checksum/secrets: a hash of "name=resourceVersion" of every referenced Secret found by lookup
(never of their data). Empty when nothing was found, e.g. under helm template.
*/}}
{{- define "omicsq.secretsChecksum" -}}
{{- $ns := include "omicsq.namespace" . }}
{{- $parts := list }}
{{- range $name := include "omicsq.referencedSecrets" . | fromJsonArray }}
{{- $s := lookup "v1" "Secret" $ns $name }}
{{- if $s }}
{{- $parts = append $parts (printf "%s=%s" $name $s.metadata.resourceVersion) }}
{{- end }}
{{- end }}
{{- if $parts }}
{{- join "," $parts | sha256sum }}
{{- end }}
{{- end }}


{{/* The NATS connection's environment (auth and TLS file paths) of a container: the worker's
with nats.auth, the console's with console.nats.auth. Takes (dict "auth" ... "tls" ...). */}}
{{- define "omicsq.natsEnv" -}}
{{- $auth := .auth }}
{{- $tls := .tls }}
{{- if eq $auth.type "creds" }}
- name: NATS_CREDS
  value: /etc/nats-creds/{{ $auth.credsKey }}
{{- else if eq $auth.type "nkey" }}
- name: NATS_NKEY
  value: /etc/nats-nkeys/{{ $auth.nkeyKey }}
{{- else if eq $auth.type "userPassword" }}
- name: NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.userKey }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.passwordKey }}
{{- else if eq $auth.type "token" }}
- name: NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.tokenKey }}
{{- end }}
{{- if or $tls.ca.secretName $tls.ca.configMapName }}
- name: NATS_CA
  value: /etc/nats-ca-cert/{{ $tls.ca.key }}
{{- end }}
{{- if $tls.clientCert.secretName }}
- name: NATS_CERT
  value: /etc/nats-certs/{{ $tls.clientCert.certKey }}
- name: NATS_KEY
  value: /etc/nats-certs/{{ $tls.clientCert.keyKey }}
{{- end }}
{{- end }}

{{/* The NATS secret files' mounts of a container; takes the dict natsEnv takes. */}}
{{- define "omicsq.natsVolumeMounts" -}}
{{- $auth := .auth }}
{{- $tls := .tls }}
{{- if eq $auth.type "creds" }}
- name: nats-creds
  mountPath: /etc/nats-creds
  readOnly: true
{{- else if eq $auth.type "nkey" }}
- name: nats-nkey
  mountPath: /etc/nats-nkeys
  readOnly: true
{{- end }}
{{- if or $tls.ca.secretName $tls.ca.configMapName }}
- name: nats-ca
  mountPath: /etc/nats-ca-cert
  readOnly: true
{{- end }}
{{- if $tls.clientCert.secretName }}
- name: nats-client-cert
  mountPath: /etc/nats-certs
  readOnly: true
{{- end }}
{{- end }}

{{/* The NATS secret files' volumes of a pod; takes the dict natsEnv takes. */}}
{{- define "omicsq.natsVolumes" -}}
{{- $auth := .auth }}
{{- $tls := .tls }}
{{- /* Secret files: mode 0440, group = fsGroup, so only the worker's user can read them. */}}
{{- if eq $auth.type "creds" }}
- name: nats-creds
  secret:
    secretName: {{ $auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $auth.credsKey }}
        path: {{ $auth.credsKey }}
{{- else if eq $auth.type "nkey" }}
- name: nats-nkey
  secret:
    secretName: {{ $auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $auth.nkeyKey }}
        path: {{ $auth.nkeyKey }}
{{- end }}
{{- if $tls.ca.secretName }}
- name: nats-ca
  secret:
    secretName: {{ $tls.ca.secretName }}
    defaultMode: 0440
    items:
      - key: {{ $tls.ca.key }}
        path: {{ $tls.ca.key }}
{{- else if $tls.ca.configMapName }}
- name: nats-ca
  configMap:
    name: {{ $tls.ca.configMapName }}
    defaultMode: 0444
    items:
      - key: {{ $tls.ca.key }}
        path: {{ $tls.ca.key }}
{{- end }}
{{- if $tls.clientCert.secretName }}
- name: nats-client-cert
  secret:
    secretName: {{ $tls.clientCert.secretName }}
    defaultMode: 0440
    items:
      - key: {{ $tls.clientCert.certKey }}
        path: {{ $tls.clientCert.certKey }}
      - key: {{ $tls.clientCert.keyKey }}
        path: {{ $tls.clientCert.keyKey }}
{{- end }}
{{- end }}

{{/* Selector labels of the console's pods: apart from the workers' (component console). */}}
{{- define "omicsq.consoleSelectorLabels" -}}
app.kubernetes.io/name: {{ include "omicsq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: console
{{- end }}
