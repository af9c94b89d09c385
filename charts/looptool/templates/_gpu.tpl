{{/*
GPU pods and the inference checkpoint cache (templates/services.yaml).
*/}}

{{/*
GPUs a container's resources ask for: every "<vendor>/gpu" resource (nvidia.com/gpu, amd.com/gpu),
limits first (for extended resources requests must equal limits, and default to them).
*/}}
{{- define "looptool.gpuCount" -}}
{{- $res := . | default dict -}}
{{- $all := merge (deepCopy ($res.limits | default dict)) (deepCopy ($res.requests | default dict)) -}}
{{- $n := 0 -}}
{{- range $k, $v := $all -}}
{{- if hasSuffix "/gpu" $k }}{{ $n = add $n (int $v) }}{{ end -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{/*
A byte count from an int or a Kubernetes quantity ("100Gi", "500M"), as a decimal integer string.
dict "q" <quantity> "field" <values path, for the error>.
*/}}
{{- define "looptool.quantityBytes" -}}
{{- $q := toString .q | trim -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $units := dict "" 1.0 "k" 1e3 "K" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "%s: %q is not a byte quantity; use e.g. 100Gi" .field $q) -}}
{{- end -}}
{{- printf "%.0f" (mulf (float64 $num) (get $units $suffix)) -}}
{{- end -}}
