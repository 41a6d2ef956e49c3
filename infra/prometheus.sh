#!/usr/bin/env bash
# Optional profile: Debian's Prometheus scraping every local service replica's /metrics.
#   bash infra/prometheus.sh up     # installs the package if missing; http://127.0.0.1:19090
#   bash infra/prometheus.sh down
# Targets: the ports `uds3 services up` gives replicas 0-1 (services/processes.py: base + service + 6 x replica).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${UDS3_STACK_DIR:-$ROOT/.stack}/prometheus
PORT=${UDS3_PROMETHEUS_PORT:-19090}
BASE=${UDS3_METRICS_BASE_PORT:-19400}
PID=$DIR/prometheus.pid

up() {
  command -v prometheus >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }
  mkdir -p "$DIR/data"
  if [[ -f $PID ]] && kill -0 "$(cat "$PID")" 2>/dev/null; then echo "prometheus already running on 127.0.0.1:$PORT"; return; fi
  local targets
  targets=$(for i in $(seq 0 11); do printf '"127.0.0.1:%d", ' $((BASE + i)); done)
  cat >"$DIR/prometheus.yml" <<YAML
global: {scrape_interval: 5s}
scrape_configs:
  - job_name: uds3
    static_configs:
      - targets: [${targets%, }]
YAML
  nohup prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
    --web.listen-address="127.0.0.1:$PORT" >"$DIR/prometheus.log" 2>&1 &
  echo $! >"$PID"
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1 && { echo "prometheus on http://127.0.0.1:$PORT (targets: ports $BASE-$((BASE + 11)))"; return; }
    sleep 0.2
  done
  echo "prometheus did not become ready; see $DIR/prometheus.log" >&2; exit 1
}

down() {
  [[ -f $PID ]] && kill "$(cat "$PID")" 2>/dev/null || true
  rm -f "$PID"
}

case ${1:-} in up) up ;; down) down ;; *) echo "usage: bash infra/prometheus.sh up|down" >&2; exit 2 ;; esac
