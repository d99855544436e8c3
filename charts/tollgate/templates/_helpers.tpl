{{/*
Names are fixed by contract (docs/install.md): the gateways, the webhook
configurations and the CLI find these objects by name.
*/}}
{{- define "tollgate.operatorName" -}}tollgate-operator{{- end -}}
{{- define "tollgate.recorderName" -}}tollgate-recorder{{- end -}}
{{- define "tollgate.recorderTLSSecret" -}}
{{- .Values.recorder.tls.existingSecret | default "tollgate-recorder-tls" -}}
{{- end -}}

{{- define "tollgate.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels on every object (componentLabels adds name and instance). */}}
{{- define "tollgate.commonLabels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator") */}}
{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: tollgate-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "tollgate.componentLabels" -}}
{{ include "tollgate.commonLabels" .ctx }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference: (dict "image" .Values.x.image "ctx" $) */}}
{{- define "tollgate.image" -}}
{{ .image.repository }}:{{ .image.tag | default .ctx.Chart.AppVersion }}
{{- end -}}

{{- define "tollgate.recorderURL" -}}
https://{{ include "tollgate.recorderName" . }}.{{ .Release.Namespace }}.svc:8443
{{- end -}}

{{/* Pod-level security context shared by the operator and the recorder. */}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tollgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* Everything the chart refuses to render, with a message saying why. */}}
{{- define "tollgate.validate" -}}
{{- $r := .Values.recorder -}}
{{- if and $r.enabled (eq $r.storage.type "sqlite") (gt (int $r.replicaCount) 1) -}}
{{- fail "recorder.replicaCount > 1 needs recorder.storage.type=postgres: a SQLite database has one writer" -}}
{{- end -}}
{{- if and $r.enabled (eq $r.storage.type "postgres") (not $r.storage.postgres.urlSecret.name) -}}
{{- fail "recorder.storage.type=postgres needs recorder.storage.postgres.urlSecret.name (a Secret holding the PostgreSQL URL)" -}}
{{- end -}}
{{- if and $r.enabled (eq $r.storage.type "postgres") (not $r.keySecret.name) -}}
{{- fail "recorder.storage.type=postgres needs recorder.keySecret.name: without a volume the checkpoint key must come from a Secret, the same for every replica and every restart" -}}
{{- end -}}
{{- end -}}

{{- /*
The recorder's self-signed serving certificate and CA (base64), as YAML: kept
from the existing Secret on upgrade, generated once per render otherwise and
memoized in .Values so the Secret and the APIService's caBundle agree.
*/ -}}
{{- define "tollgate.recorderTLSData" -}}
{{- if not (hasKey .Values "_recorderTLS") -}}
{{- $secretName := include "tollgate.recorderTLSSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- if and $existing (index $existing.data "tls.crt") -}}
{{- $_ := set .Values "_recorderTLS" (dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt" | default "")) -}}
{{- else -}}
{{- $svc := include "tollgate.recorderName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $ca := genCA "tollgate-recorder-ca" 3650 -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) (printf "*.%s-headless.%s.svc" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns 3650 $ca -}}
{{- $_ := set .Values "_recorderTLS" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- toYaml .Values._recorderTLS -}}
{{- end -}}
