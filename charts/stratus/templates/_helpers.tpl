{{- define "stratus.fullname" -}}
{{- printf "%s-stratus" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stratus.labels" -}}
app.kubernetes.io/name: stratus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "stratus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
