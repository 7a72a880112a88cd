#!/usr/bin/env bash
# Throughput, latency, memory and start time of agentmesh against the LiteLLM proxy (the
# popular Python gateway), both in front of the same mock provider, driven by the same
# load generator (wrk), one after the other, everything on 127.0.0.1.
#
#   scripts/compare-python-gateway.sh [SECONDS] [CONNECTIONS]
#
# agentmesh runs as `agentmesh up` (gateway + chat agent over gRPC + LLM client, SQLite
# ledger, in-process limits), so each request makes two hops before the provider; LiteLLM
# forwards straight to the provider. Needs: wrk (Debian package), python3 with venv; the
# LiteLLM proxy is installed from PyPI into target/litellm-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-20}"
CONNECTIONS="${2:-64}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "compare: $1 not found ($2)" >&2; exit 1; }; }
need wrk "apt-get install wrk"
need python3 "install CPython 3"

VENV=target/litellm-venv
if [ ! -x "$VENV/bin/litellm" ]; then
  echo "compare: installing the LiteLLM proxy into $VENV"
  python3 -m venv "$VENV"
  # The same pinned install as docs/llm.md (litellm[proxy] wants a package PyPI lacks).
  "$VENV/bin/pip" install -q 'litellm==1.110.2' uvicorn fastapi backoff orjson \
    apscheduler fastapi-sso pyjwt python-multipart cryptography pynacl websockets rq \
    gunicorn semver expression 'rich<14' tomlkit restrictedpython backports-zstd mcp \
    uvloop soundfile polars inquirerpy httpx2 pyroscope-io
fi

cargo build --release -q --bin agentmesh --bin agentmesh-mock-llm
BIN=target/release

wait_for() { # URL, name, started-at (ns)
  for _ in $(seq 1 600); do
    if curl -fs -o /dev/null "$1"; then
      echo "$2 ready in $(( ($(date +%s%N) - $3) / 1000000 )) ms"
      return 0
    fi
    sleep 0.05
  done
  echo "compare: $2 did not become ready" >&2
  exit 1
}

rss_mb() { # sum of RSS of the given pids and their children, in MB
  local total=0
  for pid in "$@"; do
    for p in $pid $(pgrep -P "$pid" || true); do
      total=$(( total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
    done
  done
  echo "$(( total / 1024 ))"
}

MOCK=127.0.0.1:19100
"$BIN/agentmesh-mock-llm" --listen "$MOCK" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_for "http://$MOCK/v1/models" "mock provider" "$(date +%s%N)"

# agentmesh
ADMIN=am-compare-admin-0123456789abcdef
started=$(date +%s%N)
AGENTMESH_ADMIN_KEY=$ADMIN AGENTMESH_LOG=warn \
  AGENTMESH_LLM_BASE_URL="http://$MOCK/v1" AGENTMESH_LLM_API_KEY=mock AGENTMESH_LLM_MODEL=mock \
  "$BIN/agentmesh" up --quiet --listen 127.0.0.1:19080 --data-dir "$WORK/am" \
  >"$WORK/agentmesh.log" 2>&1 &
AM_PID=$!
PIDS+=($AM_PID)
wait_for http://127.0.0.1:19080/ready agentmesh "$started"
KEY=$(curl -fs http://127.0.0.1:19080/admin/keys -H "Authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' \
  -d '{"name":"compare","rpm_limit":100000000,"tpm_limit":4000000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

# LiteLLM proxy, one worker per core
cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: chat
    litellm_params:
      model: openai/mock
      api_base: http://$MOCK/v1
      api_key: mock
general_settings:
  master_key: sk-compare-0123456789abcdef
litellm_settings:
  telemetry: false
EOF
started=$(date +%s%N)
"$VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port 19400 \
  --num_workers 2 >"$WORK/litellm.log" 2>&1 &
LL_PID=$!
PIDS+=($LL_PID)
wait_for http://127.0.0.1:19400/health/liveliness litellm "$started"

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"chat","messages":[{"role":"user","content":"hello there"}]}'
EOF

run() { # name URL key pid
  local name=$1 url=$2 key=$3 pid=$4
  # warm up, then measure
  wrk -t2 -c"$CONNECTIONS" -d3s -s "$WORK/post.lua" -H "Authorization: Bearer $key" "$url" \
    >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/post.lua" \
    -H "Authorization: Bearer $key" "$url" >"$WORK/$name.wrk"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/$name.wrk")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/$name.wrk")
  errors=$(awk '/Non-2xx/ {print $5}' "$WORK/$name.wrk")
  printf '%-10s %10s req/s   p50 %8s   p99 %8s   non-2xx %s   RSS %s MB\n' \
    "$name" "$rps" "$p50" "$p99" "${errors:-0}" "$(rss_mb "$pid")"
  echo "$rps" >"$WORK/$name.rps"
}

# Each system is measured while the other one idles.
echo "wrk: $CONNECTIONS connections, ${SECONDS_PER_RUN}s, POST /v1/chat/completions"
run agentmesh http://127.0.0.1:19080/v1/chat/completions "$KEY" "$AM_PID"
run litellm http://127.0.0.1:19400/v1/chat/completions sk-compare-0123456789abcdef "$LL_PID"
python3 - "$WORK" <<'EOF'
import sys
work = sys.argv[1]
am = float(open(f"{work}/agentmesh.rps").read())
ll = float(open(f"{work}/litellm.rps").read())
print(f"agentmesh / litellm throughput: {am / ll:.1f}x")
EOF
