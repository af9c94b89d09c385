{{/* Names */}}
{{- define "looptool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "looptool.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "looptool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: common + selector. Call with (dict "ctx" $ "component" "inference") */}}
{{- define "looptool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "looptool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "looptool.labels" -}}
{{ include "looptool.selectorLabels" . }}
helm.sh/chart: {{ include "looptool.chart" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: looptool
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image: (dict "ctx" $ "image" .Values.services.x.image) */}}
{{- define "looptool.image" -}}
{{- $img := .image | default dict -}}
{{- $repo := $img.repository | default .ctx.Values.image.repository -}}
{{- $tag := $img.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "looptool.serviceName" -}}
{{- printf "%s-%s" (include "looptool.fullname" .ctx) .service -}}
{{- end -}}

{{- define "looptool.configName" -}}
{{- printf "%s-config" (include "looptool.fullname" .) -}}
{{- end -}}

{{- define "looptool.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- .Values.operator.serviceAccount.name | default (printf "%s-operator" (include "looptool.fullname" .)) -}}
{{- else -}}
{{- .Values.operator.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* S3: the Secret holding accessKey/secretKey, the endpoint, the bucket. The bundled SeaweedFS
  (objectStore.bundled) or an external S3 (objectStore.endpoint + objectStore.existingSecret). */}}
{{- define "looptool.s3SecretName" -}}
{{- if .Values.objectStore.bundled -}}
{{- printf "%s-s3" (include "looptool.fullname" .) -}}
{{- else -}}
{{- required "objectStore.existingSecret is required when objectStore.bundled=false (a Secret with accessKey and secretKey)" .Values.objectStore.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The trainer Jobs' credentials: a read-the-bucket, write-under-runs/ identity with SeaweedFS;
  with an external S3, objectStore.trainerSecret (default: the services' Secret). */}}
{{- define "looptool.s3TrainerSecretName" -}}
{{- if .Values.objectStore.bundled -}}
{{- printf "%s-s3-trainer" (include "looptool.fullname" .) -}}
{{- else -}}
{{- .Values.objectStore.trainerSecret | default (include "looptool.s3SecretName" .) -}}
{{- end -}}
{{- end -}}

{{- define "looptool.s3Endpoint" -}}
{{- if .Values.objectStore.bundled -}}
{{- printf "http://%s-s3.%s.svc:8333" (include "looptool.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "objectStore.endpoint is required when objectStore.bundled=false" .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "looptool.s3Bucket" -}}
{{- .Values.objectStore.bucket -}}
{{- end -}}

{{/* Environment every LoopTool container gets: S3 credentials from the Secret, config path. */}}
{{- define "looptool.env" -}}
- name: LOOPTOOL_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "looptool.s3SecretName" . }}
      key: accessKey
- name: LOOPTOOL_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "looptool.s3SecretName" . }}
      key: secretKey
- name: HOME
  value: /tmp
{{- end -}}

{{/* Namespaces the operator handles (list). */}}
{{- define "looptool.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- toJson .Values.operator.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Least-privilege rules of the operator (Role per watched namespace, or ClusterRole). */}}
{{- define "looptool.operatorRules" -}}
# LoopRounds: watch, patch for kopf's finalizer/annotations, create for LoopPlans' rounds.
- apiGroups: ["looptool.io"]
  resources: ["looprounds"]
  verbs: ["get", "list", "watch", "patch", "create"]
# LoopPlans: watch (their rounds are created above and garbage-collected with the plan).
- apiGroups: ["looptool.io"]
  resources: ["loopplans"]
  verbs: ["get", "list", "watch", "patch"]
# .status is written only by the operator.
- apiGroups: ["looptool.io"]
  resources: ["looprounds/status", "loopplans/status"]
  verbs: ["get", "patch"]
# Training Jobs: created, followed and cleaned up.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Multi-node training (spec.training.nnodes > 1): KubeRay RayJobs, like the Jobs above. Whether the
# cluster serves them is read from API discovery, which needs no grant.
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The ConfigMap holding each training Job's request.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "delete"]
# Each round's trainer work volume (checkpoints survive Job retries), owned by the LoopRound.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create", "delete"]
# Trainer pods: read only, to explain why a Job is stuck or failed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# Events on LoopRounds.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Transport security files (security.tls / security.token Secrets), mounted into every gRPC
  server and client (services, operator) at the paths config.yaml's `security:` names. */}}
{{- define "looptool.securityVolumeMounts" -}}
{{- if .Values.security.tls.secretName }}
- name: tls
  mountPath: /etc/looptool/tls
  readOnly: true
{{- end }}
{{- if .Values.security.token.secretName }}
- name: token
  mountPath: /etc/looptool/token
  readOnly: true
{{- end }}
{{- end -}}

{{- define "looptool.securityVolumes" -}}
{{- if .Values.security.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.security.tls.secretName }}
{{- end }}
{{- if .Values.security.token.secretName }}
- name: token
  secret:
    secretName: {{ .Values.security.token.secretName }}
{{- end }}
{{- end -}}

{{/* A service's probe action: kubelet's native gRPC probe speaks plaintext only, so with TLS the
  probes check the port opens (the server binds only after its servicer and model are ready). */}}
{{- define "looptool.probeAction" -}}
{{- if .ctx.Values.security.tls.secretName -}}
tcpSocket:
  port: {{ .port }}
{{- else -}}
grpc:
  port: {{ .port }}
{{- end -}}
{{- end -}}
