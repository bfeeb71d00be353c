{{/*
Names, labels and the checks every template shares. Only functions that
scripts/helm-render implements are used here (sprig's, include, tpl,
required, toYaml), so that `make test` renders what Helm renders.
*/}}

{{- define "rankd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name: the release name alone when it already holds the chart's. */}}
{{- define "rankd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rankd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rankd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rankd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rankd.labels" -}}
helm.sh/chart: {{ include "rankd.chart" . }}
{{ include "rankd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "rankd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rankd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rankd.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "rankd.modelClaim" -}}
{{- if .Values.model.pvc.create -}}
{{- printf "%s-models" (include "rankd.fullname" .) -}}
{{- else -}}
{{- required "model.pvc.existingClaim is required with model.source pvc (or set model.pvc.create)" .Values.model.pvc.existingClaim -}}
{{- end -}}
{{- end -}}

{{/*
rankd.validate: what would deploy a pod that cannot work, refused at
render time with the value to change. Included by the ConfigMap and the
Deployment, so that `helm template` and `helm install` both stop.
*/}}
{{- define "rankd.validate" -}}
{{- $c := .Values.config -}}
{{- $http := $c.http | default dict -}}
{{- if not (hasKey $http "enabled" | ternary $http.enabled true) -}}
{{- fail "config.http.enabled must be true: the probes and the Service use /healthz, /readyz and /metrics" -}}
{{- end -}}
{{- if ne (toString (default "127.0.0.1" $http.bind)) "0.0.0.0" -}}
{{- fail (printf "config.http.bind must be \"0.0.0.0\" (is %q): the kubelet probes the pod's address" (toString (default "127.0.0.1" $http.bind))) -}}
{{- end -}}
{{- $model := $c.model | default dict -}}
{{- $path := toString (default "" $model.path) -}}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" .Values.model.mountPath)) $path) -}}
{{- fail (printf "config.model.path %q must be a file under model.mountPath (%s), where the model volume is mounted" $path .Values.model.mountPath) -}}
{{- end -}}
{{- $b := $model.b | default dict -}}
{{- $bpath := toString (default "" $b.path) -}}
{{- if and $bpath (not (hasPrefix (printf "%s/" (trimSuffix "/" .Values.model.mountPath)) $bpath)) -}}
{{- fail (printf "config.model.b.path %q must be a file under model.mountPath (%s), where the model volume is mounted" $bpath .Values.model.mountPath) -}}
{{- end -}}
{{- if and (not $bpath) (gt (int (default 0 $b.percent)) 0) -}}
{{- fail (printf "config.model.b.percent is %d but config.model.b.path is empty: set variant b's artifact, or percent 0" (int $b.percent)) -}}
{{- end -}}
{{- if not (has .Values.model.source (list "pvc" "emptyDir")) -}}
{{- fail (printf "model.source must be pvc or emptyDir (is %q)" (toString .Values.model.source)) -}}
{{- end -}}
{{- if and (eq .Values.model.source "emptyDir") (not .Values.model.init.image) -}}
{{- fail "model.init.image is required with model.source emptyDir: something must write the model into the empty volume" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "autoscaling.enabled and keda.enabled are both true: KEDA makes its own HorizontalPodAutoscaler; pick one" -}}
{{- end -}}
{{- $redis := $c.redis | default dict -}}
{{- if or $redis.password $redis.password_file -}}
{{- fail "config.redis.password and password_file are not set here: name a Secret in secrets.redis.existingSecret" -}}
{{- end -}}
{{- if $http.token -}}
{{- fail "config.http.token is not set here: name a Secret in secrets.http.existingSecret" -}}
{{- end -}}
{{- $kafka := $c.kafka | default dict -}}
{{- range $k, $v := ($kafka.properties | default dict) -}}
{{- if or (contains "password" $k) (contains "secret" $k) (has $k (list "ssl.key.pem" "sasl.oauthbearer.config")) -}}
{{- fail (printf "config.kafka.properties.%s is a secret: it would be readable in the ConfigMap; use secrets.kafka" $k) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.secrets.kafka.sasl.enabled (not .Values.secrets.kafka.sasl.existingSecret) -}}
{{- fail "secrets.kafka.sasl.existingSecret is required with secrets.kafka.sasl.enabled" -}}
{{- end -}}
{{- end -}}

{{/* KEDA's name for the SASL mechanism in config.kafka.properties ("" for none). */}}
{{- define "rankd.kedaSasl" -}}
{{- $props := .Values.config.kafka.properties | default dict -}}
{{- $modes := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" "OAUTHBEARER" "oauthbearer" -}}
{{- if .Values.secrets.kafka.sasl.enabled -}}
{{- $mech := upper (toString (default "PLAIN" (index $props "sasl.mechanism"))) -}}
{{- required (printf "KEDA's kafka scaler does not know sasl.mechanism %s" $mech) (get $modes $mech) -}}
{{- end -}}
{{- end -}}

{{/* "enable" when config.kafka.properties asks for TLS. */}}
{{- define "rankd.kedaTls" -}}
{{- $props := .Values.config.kafka.properties | default dict -}}
{{- $proto := upper (toString (default "PLAINTEXT" (index $props "security.protocol"))) -}}
{{- if has $proto (list "SSL" "SASL_SSL") -}}enable{{- end -}}
{{- end -}}
