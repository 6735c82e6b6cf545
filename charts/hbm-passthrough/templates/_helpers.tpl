{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "hbm-passthrough.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart when the release name lacks the chart name. */}}
{{- define "hbm-passthrough.fullname" -}}
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

{{- define "hbm-passthrough.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "hbm-passthrough.labels" -}}
helm.sh/chart: {{ include "hbm-passthrough.chart" . }}
{{ include "hbm-passthrough.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ if eq .Values.mode "dra" }}dra-driver{{ else }}device-plugin{{ end }}
app.kubernetes.io/part-of: hbm-passthrough
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels the DaemonSet selects its pods by (immutable after install). */}}
{{- define "hbm-passthrough.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hbm-passthrough.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hbm-passthrough.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hbm-passthrough.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion. */}}
{{- define "hbm-passthrough.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Kubelet directories as seen on the host (and, mounted at the same path, in the container). */}}
{{- define "hbm-passthrough.devicePluginDir" -}}
{{- printf "%s/device-plugins" (trimSuffix "/" .Values.kubeletRootDir) }}
{{- end }}
{{- define "hbm-passthrough.pluginsRegistryDir" -}}
{{- printf "%s/plugins_registry" (trimSuffix "/" .Values.kubeletRootDir) }}
{{- end }}

{{/* The value of the hooks.kubevirt.io/hookSidecars VMI annotation that runs the hbm-hook sidecar. */}}
{{- define "hbm-passthrough.hookSidecars" -}}
{{- $sidecar := .Values.kubevirt.sidecar }}
{{- $gi := printf "--generic-initiator=%s" (.Values.kubevirt.genericInitiator | default "qemu-commandline") }}
{{- $args := list "kubevirt-sidecar" "--socket-dir" "/var/run/kubevirt-hooks" "--name" $sidecar.hookName "--dialect" .Values.config.defaultDialect $gi }}
{{- $entry := dict "image" (include "hbm-passthrough.image" (list $sidecar.image .)) "imagePullPolicy" $sidecar.image.pullPolicy "args" (concat $args $sidecar.extraArgs) }}
{{- list $entry | toJson }}
{{- end }}

{{/* permittedHostDevices.pciHostDevices entries: one per vendor:device a resource rule names (vendor-only rules get none: KubeVirt's selector needs both). */}}
{{- define "hbm-passthrough.pciHostDevices" -}}
{{- $out := list }}
{{- if ne .Values.mode "dra" }}{{/* with DRA nothing goes into permittedHostDevices */}}
{{- range .Values.config.resources }}
{{- $rule := . }}
{{- $devices := .selector.devices | default list }}
{{- if .selector.device }}
{{- $devices = prepend $devices .selector.device }}
{{- end }}
{{- range $devices }}
{{- $out = append $out (dict "pciVendorSelector" (printf "%s:%s" ($rule.selector.vendor | lower | trimPrefix "0x") (. | lower | trimPrefix "0x")) "resourceName" $rule.name "externalResourceProvider" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- $out | toJson }}
{{- end }}

{{/* The DRA driver's plugin directory (socket, checkpoint, metadata files) and its DeviceClass name. */}}
{{- define "hbm-passthrough.draPluginsDir" -}}
{{- printf "%s/plugins" (trimSuffix "/" .Values.kubeletRootDir) }}
{{- end }}
{{- define "hbm-passthrough.deviceClassName" -}}
{{- default .Values.dra.driverName .Values.dra.deviceClass.name }}
{{- end }}
