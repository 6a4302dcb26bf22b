{{/* The chart's name, or nameOverride. */}}
{{- define "llmusage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<name>, or the release alone when it already holds the
name, or fullnameOverride. Kept short enough for a "-injector-tls" suffix. */}}
{{- define "llmusage.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "llmusage.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmusage.injector.fullname" -}}
{{- printf "%s-injector" (include "llmusage.fullname" .) -}}
{{- end -}}

{{/* Labels of an object: (list . COMPONENT EXTRA...), where COMPONENT
is "" for the chart's name or such as "injector" for "<name>-injector",
and each EXTRA a dict of labels. commonLabels come first, the chart's
labels over them, the EXTRAs over those, and the name and instance (the
selectors') over everything: a key is never repeated. */}}
{{- define "llmusage.labels" -}}
{{- $ := index . 0 -}}
{{- $labels := deepCopy $.Values.commonLabels -}}
{{- $_ := set $labels "helm.sh/chart" (printf "%s-%s" $.Chart.Name $.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-") -}}
{{- $_ = set $labels "app.kubernetes.io/part-of" "llmusage" -}}
{{- $_ = set $labels "app.kubernetes.io/managed-by" $.Release.Service -}}
{{- if $.Chart.AppVersion -}}
{{- $_ = set $labels "app.kubernetes.io/version" $.Chart.AppVersion -}}
{{- end -}}
{{- range slice . 2 -}}
{{- $labels = mergeOverwrite $labels (deepCopy .) -}}
{{- end -}}
{{- $labels = mergeOverwrite $labels (include "llmusage.selectorLabels" (list $ (index . 1)) | fromYaml) -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* The name and instance labels: (list . "") for the chart's name,
(list . "injector") for "<name>-injector". */}}
{{- define "llmusage.selectorLabels" -}}
{{- $ := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "llmusage.name" $ }}{{ if $component }}-{{ $component }}{{ end }}
app.kubernetes.io/instance: {{ $.Release.Name }}
{{- end -}}

{{/* The injector's pods: its Deployment's selector. */}}
{{- define "llmusage.injector.selectorLabels" -}}
{{- include "llmusage.selectorLabels" (list . "injector") -}}
{{- end -}}

{{- define "llmusage.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The restricted container securityContext of every llmusage container. */}}
{{- define "llmusage.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "llmusage.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The injector Service's DNS names, which its certificate covers. */}}
{{- define "llmusage.injector.dnsNames" -}}
{{- $svc := include "llmusage.injector.fullname" . -}}
- {{ $svc }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}
