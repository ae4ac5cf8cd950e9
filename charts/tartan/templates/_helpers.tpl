{{- define "tartan.labels" -}}
app.kubernetes.io/name: tartan
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tartan.selector" -}}
app.kubernetes.io/name: tartan
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tartan.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "tartan.operator" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "tartan.agent" -}}{{ .Release.Name }}-agent{{- end -}}
