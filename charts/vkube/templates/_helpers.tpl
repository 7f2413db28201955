{{- define "vkube.labels" -}}
app.kubernetes.io/name: vkube
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "vkube.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The policy file the manager reads: the values, with each version's image filled in. */}}
{{- define "vkube.policy" -}}
{{- $p := deepCopy .Values.policy -}}
{{- $versions := list -}}
{{- range .Values.policy.kubernetesVersions -}}
{{- $v := dict "version" .version "image" (default (include "vkube.image" $) .image) -}}
{{- if .featureGates }}{{ $_ := set $v "featureGates" .featureGates }}{{ end -}}
{{- if .runtimeConfig }}{{ $_ := set $v "runtimeConfig" .runtimeConfig }}{{ end -}}
{{- $versions = append $versions $v -}}
{{- end -}}
{{- $_ := set $p "kubernetesVersions" $versions -}}
{{- $_ := set $p "imagePullPolicy" .Values.image.pullPolicy -}}
{{- $_ := set $p "syncerClusterRead" .Values.syncer.clusterRead -}}
{{- if .Values.metrics.tenants.enabled -}}
{{- $_ := set $p "tenantMetrics" (dict "port" (int .Values.metrics.tenants.port) "allowedNamespaces" (default list .Values.metrics.allowedNamespaces)) -}}
{{- end -}}
{{- if not $p.controlPlane.storageClassName -}}
{{- $_ := unset $p.controlPlane "storageClassName" -}}
{{- end -}}
{{- toYaml $p -}}
{{- end }}

{{/* The allowed versions as a JSON list (for CEL). */}}
{{- define "vkube.versions" -}}
{{- $v := list -}}
{{- range .Values.policy.kubernetesVersions }}{{ $v = append $v .version }}{{ end -}}
{{- $v | toJson -}}
{{- end }}

{{/* Names no VirtualCluster may have, as a JSON list (for CEL): `system`, the admin's
     policy.reservedNames, and the one whose host namespace would be the release namespace. */}}
{{- define "vkube.reservedNames" -}}
{{- $names := concat (list "system") (default list .Values.policy.reservedNames) -}}
{{- if hasPrefix "vkube-" .Release.Namespace -}}
{{- $names = append $names (trimPrefix "vkube-" .Release.Namespace) -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end }}
