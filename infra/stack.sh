#!/usr/bin/env bash
# Native local server stack for uds3-saga (no Docker needed):
#   Kafka 4 (KRaft, one broker+controller node, SASL/SCRAM, ACLs by the KRaft authorizer), Neo4j 5.26 Community (embedded, Bolt only),
#   or with UDS3_KAFKA_NODES=3 a Kafka cluster of three broker+controller nodes (replication factor 3,
#   min.insync.replicas=2, no unclean leader election) on ports of its own, beside the single node,
#   PostgreSQL 15 (Debian packages, the project's own cluster), milvus-lite's own gRPC server
#   (from the project's virtual environment: every vector process is its client, as of a Milvus cluster),
#   s3proxy (an S3 API server on a folder, from Maven Central: the chunk store's object-store option).
#
# Usage: bash infra/stack.sh fetch|up|down|down-cluster|status|logs [kafka|neo4j|postgres|milvus|s3proxy]
#   fetch   download jars (Maven Central) / install postgresql-15 if missing; compile launcher
#   up      fetch if needed, start what is not running, return when every server answers
#   down    stop all servers (SIGTERM, wait, SIGKILL as a last resort)
#   down-cluster  stop the 3-node Kafka cluster only
#   status  one line per server
#   logs    tail the server logs
#
# Everything lives in $UDS3_STACK_DIR (default <repo>/.stack, git-ignored):
#   artifacts/  fetched jars + compiled launcher     data/  databases (persist across restarts)
#   logs/       server logs                            run/   pid files, PG socket, lock
# Versions are pinned in infra/versions.env. All servers listen on 127.0.0.1 only.
set -euo pipefail

INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$INFRA_DIR")
# shellcheck source=versions.env
source "$INFRA_DIR/versions.env"

STACK_DIR=${UDS3_STACK_DIR:-$REPO_DIR/.stack}
KAFKA_PORT=${UDS3_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${UDS3_KAFKA_CONTROLLER_PORT:-19093}
# The cluster profile: node i (1..N) listens on CLUSTER_PORT + 2(i-1), its controller one above.
KAFKA_NODES=${UDS3_KAFKA_NODES:-1}
KAFKA_CLUSTER_PORT=${UDS3_KAFKA_CLUSTER_PORT:-29092}
[[ $KAFKA_NODES =~ ^[13]$ ]] || { echo "[stack] ERROR: UDS3_KAFKA_NODES must be 1 or 3" >&2; exit 1; }
NEO4J_BOLT_PORT=${UDS3_NEO4J_BOLT_PORT:-17687}
# The local stack's Neo4j password (user neo4j); the same default is in services/core/config.py.
# Anywhere else, set UDS3_NEO4J_PASSWORD (and UDS3_NEO4J_URI / UDS3_NEO4J_USER) in the environment.
export UDS3_NEO4J_PASSWORD=${UDS3_NEO4J_PASSWORD:-uds3-local-graph}
# The local stack's Kafka super user (SCRAM, created when the storage is formatted). It provisions
# each deployment's principals, topics and ACLs (services/core/kafka_admin.py); the same default is
# in services/core/config.py. Anywhere else, set UDS3_KAFKA_PASSWORD_ADMIN in the environment.
export UDS3_KAFKA_PASSWORD_ADMIN=${UDS3_KAFKA_PASSWORD_ADMIN:-uds3-local-admin}
PG_PORT=${UDS3_PG_PORT:-15432}
MILVUS_PORT=${UDS3_MILVUS_PORT:-19530}
S3_PORT=${UDS3_S3_PORT:-18333}
# The local stack's S3 identity `uds3` (the same default is in services/core/config.py).
export UDS3_S3_SECRET=${UDS3_S3_SECRET:-uds3-local-s3}
PYTHON=${UDS3_PYTHON:-$REPO_DIR/.venv/bin/python}  # milvus-lite is a Python package of the project
UP_TIMEOUT=${UDS3_UP_TIMEOUT:-120}     # seconds to wait for each server to answer
STOP_TIMEOUT=${UDS3_STOP_TIMEOUT:-60}  # seconds between SIGTERM and SIGKILL

ART=$STACK_DIR/artifacts
DATA=$STACK_DIR/data
LOGS=$STACK_DIR/logs
RUN=$STACK_DIR/run

KAFKA_LIB=$ART/kafka-$KAFKA_VERSION
NEO4J_LIB=$ART/neo4j-$NEO4J_VERSION
NEO4J_CLASSES=$NEO4J_LIB/classes
S3PROXY_LIB=$ART/s3proxy-$S3PROXY_VERSION
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_DATA=$DATA/postgres
PG_SOCK=$RUN/postgres            # unix socket dir (owned by postgres)
PG_LOGS=$LOGS/postgres

KAFKA_JAVA_OPTS=(-Xms256m -Xmx1G -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true)
# Neo4j: an explicit -Xms (Neo4j warns without one; below -Xmx keeps idle RSS smaller).
# The add-opens are the ones the Neo4j server script passes (without them the page
# cache and the transaction-log native access run in a slower fallback mode).
NEO4J_JAVA_OPTS=(-Xms256m -Xmx768m -XX:+UseG1GC -XX:-OmitStackTraceInFastThrow
  -Duds3.neo4j.pagecache=$((256 * 1024 * 1024)) -Djdk.nio.maxCachedBufferSize=1024
  -Dio.netty.tryReflectionSetAccessible=true -Dlog4j2.disable.jmx=true
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED
  --enable-native-access=ALL-UNNAMED)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

require_java() {
  JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
  command -v "$JAVA" >/dev/null 2>&1 ||
    die "java not found ('$JAVA'; need Java 17+; Debian: apt-get install -y openjdk-17-jdk-headless, or set JAVA_HOME)"
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [[ ${major%%.*} -ge 17 ]] 2>/dev/null || die "Java 17+ required, '$JAVA' is version '${major:-?}'"
  JAVAC=$(dirname "$(readlink -f "$(command -v "$JAVA")")")/javac
}

# pid from a pid file if that process is alive and its command line contains $2
# (guards against a recycled pid); removes a stale pid file.
live_pid() {
  local file=$1 marker=$2 pid
  [[ -f $file ]] || return 1
  pid=$(head -n1 "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
     tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
    echo "$pid"; return 0
  fi
  [[ $file == "$PG_DATA/postmaster.pid" ]] || rm -f "$file"  # postgres cleans its own
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start a server on a port somebody else already listens on.
require_free_port() {
  local port=$1 what=$2 var=$3
  if port_open "$port"; then
    local who
    who=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -n1 || true)
    die "port $port ($what) is already in use by another process ${who:-(unknown)}; stop it or set $var to a free port"
  fi
}

# Print the end of the two most recently written logs of a server's log dir.
show_logs() {
  local dir=$1 f
  for f in $(ls -t "$dir" 2>/dev/null | head -n 2); do
    printf -- '--- last lines of %s:\n' "$dir/$f" >&2
    tail -n 25 "$dir/$f" >&2 || true
  done
}

# Wait until "$@" succeeds; fail with the log tail if the server dies or times out.
wait_for() {
  local what=$1 logdir=$2 pidfile=$3 marker=$4; shift 4
  local deadline=$((SECONDS + UP_TIMEOUT))
  until "$@"; do
    if ! live_pid "$pidfile" "$marker" >/dev/null; then
      show_logs "$logdir"
      die "$what exited during startup (logs above)"
    fi
    if ((SECONDS >= deadline)); then
      show_logs "$logdir"
      die "$what did not answer within ${UP_TIMEOUT}s (logs above; raise UDS3_UP_TIMEOUT if the machine is just slow)"
    fi
    sleep 0.5
  done
}

# Wait up to STOP_TIMEOUT for a pid that got SIGTERM to exit, then SIGKILL it.
wait_stopped() {
  local pid=$1 what=$2 i
  for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  log "$what did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Start a command detached from this shell (own session, so Ctrl-C / hang-up of the
# caller does not kill it) with output to a log, and record its pid.
# fd 9 (the stack lock) is closed so the server does not hold the lock forever.
spawn() {
  local pidfile=$1 logfile=$2; shift 2
  # logs are appended across restarts; mark each start so log tails are readable
  printf '==== %s started by infra/stack.sh ====\n' "$(date '+%F %T')" >>"$logfile"
  setsid nohup "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
  echo $! >"$pidfile"
}

# Run a command as the postgres OS user (initdb/pg_ctl refuse root) from a dir it can read.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# Fetch a pom's runtime dependencies into a versioned folder. Offline first, so a
# wiped .stack is rebuilt from ~/.m2 without network; marker file = complete.
mvn_fetch() {
  local pom=$1 dest=$2; shift 2
  [[ -f $dest/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found (Debian: apt-get install -y maven)"
  log "fetching $(basename "$dest") with Maven into $dest"
  rm -rf "$dest.tmp"
  local args=(-B -q -Dstyle.color=never -f "$pom" "$@" -DincludeScope=runtime -DoutputDirectory="$dest.tmp"
    "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy-dependencies")
  mvn -o "${args[@]}" >/dev/null 2>&1 || mvn "${args[@]}" || die "Maven fetch of $pom failed"
  rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
}

# ---------------------------------------------------------------- fetch

fetch_kafka() {
  mvn_fetch "$INFRA_DIR/kafka/pom.xml" "$KAFKA_LIB" \
    -Dkafka.version="$KAFKA_VERSION" -Dscala.binary="$SCALA_BINARY" -Dlog4j.version="$LOG4J_VERSION"
}

fetch_neo4j() {
  mvn_fetch "$INFRA_DIR/neo4j/pom.xml" "$NEO4J_LIB" -Dneo4j.version="$NEO4J_VERSION"
  # (re)compile the launcher when missing or older than its source
  local src=$INFRA_DIR/neo4j/Neo4jLauncher.java
  if [[ ! -f $NEO4J_CLASSES/Neo4jLauncher.class || $src -nt $NEO4J_CLASSES/Neo4jLauncher.class ]]; then
    [[ -x $JAVAC ]] || die "javac not found next to java ($JAVAC); install a JDK, not only a JRE"
    log "compiling Neo4jLauncher"
    mkdir -p "$NEO4J_CLASSES"
    "$JAVAC" -nowarn -d "$NEO4J_CLASSES" -cp "$NEO4J_LIB/*" "$src"
  fi
}

fetch_s3proxy() {
  mvn_fetch "$INFRA_DIR/s3proxy/pom.xml" "$S3PROXY_LIB" -Ds3proxy.version="$S3PROXY_VERSION"
}

fetch_postgres() {
  [[ -x $PG_BIN/initdb ]] && return 0
  log "PostgreSQL $PG_MAJOR not installed; installing postgresql-$PG_MAJOR with apt-get"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-$PG_MAJOR"
  pg_locate
}

cmd_fetch() {
  require_java
  mkdir -p "$ART"
  fetch_kafka
  fetch_neo4j
  fetch_s3proxy
  fetch_postgres
}

# ---------------------------------------------------------------- Kafka

# Node 0 is the single-node stack (the default); nodes 1..N form the cluster profile. Each call
# sets the node's id, ports and folders.
kafka_node() {
  local n=$1
  if ((n == 0)); then
    K_ID=1 K_PORT=$KAFKA_PORT K_CTRL=$KAFKA_CONTROLLER_PORT K_DIR=$DATA/kafka K_LOGS=$LOGS/kafka
    K_PID=$RUN/kafka.pid K_VOTERS="1@127.0.0.1:$KAFKA_CONTROLLER_PORT" K_RF=1 K_ISR=1 K_NAME=Kafka
    K_CLUSTER_ID=$DATA/kafka/cluster.id
  else
    K_ID=$n K_PORT=$((KAFKA_CLUSTER_PORT + 2 * (n - 1))) K_DIR=$DATA/kafka-cluster/node-$n K_LOGS=$LOGS/kafka-$n
    K_CTRL=$((K_PORT + 1)) K_PID=$RUN/kafka-$n.pid K_RF=3 K_ISR=2 K_NAME="Kafka node $n"
    K_CLUSTER_ID=$DATA/kafka-cluster/cluster.id  # one id for the cluster's nodes
    K_VOTERS=$(for i in 1 2 3; do printf '%s@127.0.0.1:%s,' "$i" $((KAFKA_CLUSTER_PORT + 2 * (i - 1) + 1)); done)
    K_VOTERS=${K_VOTERS%,}
  fi
}

kafka_bootstrap() {  # what clients of the selected profile connect to
  local n out=()
  for n in $(kafka_selected); do kafka_node "$n"; out+=("127.0.0.1:$K_PORT"); done
  (IFS=,; echo "${out[*]}")
}

kafka_selected() { if ((KAFKA_NODES == 1)); then echo 0; else seq 1 "$KAFKA_NODES"; fi; }

kafka_pid() { live_pid "$K_PID" "$K_DIR/server.properties"; }

kafka_java() {  # run a Kafka class (tool) with quiet logging
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$INFRA_DIR/kafka/tools-log4j2.xml" \
    -cp "$KAFKA_LIB/*" "$@"
}

write_kafka_config() {
  # regenerated on every start so port env vars take effect; static quorum
  # (controller.quorum.voters) so a changed controller port needs no re-format
  (umask 077 && : >"$K_DIR/server.properties" && : >"$K_DIR/admin.properties")  # hold passwords
  cat >"$K_DIR/admin.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$UDS3_KAFKA_PASSWORD_ADMIN";
EOF
  cat >"$K_DIR/server.properties" <<EOF
# GENERATED by infra/stack.sh on every start - edit the script, not this file.
process.roles=broker,controller
node.id=$K_ID
controller.quorum.voters=$K_VOTERS
listeners=SASL_PLAINTEXT://127.0.0.1:$K_PORT,CONTROLLER://127.0.0.1:$K_CTRL
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$K_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# Authentication: every client is a SCRAM principal (credentials live in the metadata log);
# the controller listener cannot use SCRAM (it serves that log), so it takes PLAIN for the
# broker itself. Authorization: the KRaft authorizer; no ACL means no access.
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$UDS3_KAFKA_PASSWORD_ADMIN";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$UDS3_KAFKA_PASSWORD_ADMIN" user_admin="$UDS3_KAFKA_PASSWORD_ADMIN";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
log.dirs=$K_DIR/log
# topics are created explicitly by the project (admin client), never implicitly
auto.create.topics.enable=false
num.partitions=1
# A write is acknowledged (acks=all) once min.insync.replicas copies have it; a replica that
# fell behind never becomes leader (that would lose acknowledged writes).
default.replication.factor=$K_RF
min.insync.replicas=$K_ISR
unclean.leader.election.enable=false
offsets.topic.replication.factor=$K_RF
transaction.state.log.replication.factor=$K_RF
transaction.state.log.min.isr=$K_ISR
share.coordinator.state.topic.replication.factor=$K_RF
share.coordinator.state.topic.min.isr=$K_ISR
# fewer internal partitions than the default 50: faster first use on a dev box
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
# consumers join immediately (tests would otherwise wait 3 s per group)
group.initial.rebalance.delay.ms=0
log.retention.hours=168
# a node that stops answering is fenced (its leaderships move, it leaves the ISR) within 3 s
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
EOF
}

kafka_format_once() {
  # Storage formatted before authentication was on has no admin credential: the local stack's
  # topics are throwaway (every deployment provisions its own), so it is formatted again.
  if [[ -f $K_DIR/log/meta.properties && ! -f $K_DIR/scram ]]; then
    log "$K_NAME storage predates SASL/SCRAM: formatting it again (deployments re-provision their topics)"
    rm -rf "$K_DIR/log"
  fi
  [[ -f $K_DIR/log/meta.properties ]] && return 0
  [[ -s $K_CLUSTER_ID ]] || kafka_java kafka.tools.StorageTool random-uuid >"$K_CLUSTER_ID"
  log "formatting $K_NAME KRaft storage (cluster id $(cat "$K_CLUSTER_ID")) with the admin's SCRAM credential"
  kafka_java kafka.tools.StorageTool format -t "$(cat "$K_CLUSTER_ID")" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$UDS3_KAFKA_PASSWORD_ADMIN]" \
    -c "$K_DIR/server.properties" >>"$K_LOGS/kafka.out" 2>&1 && touch "$K_DIR/scram" ||
    { tail -n 20 "$K_LOGS/kafka.out" >&2; die "$K_NAME storage format failed"; }
}

kafka_start() {
  kafka_pid >/dev/null && return 0
  mkdir -p "$K_DIR" "$K_LOGS"
  write_kafka_config
  kafka_format_once
  log "starting $K_NAME $KAFKA_VERSION on 127.0.0.1:$K_PORT"
  # log4j2's own shutdown hook would stop logging before Kafka's shutdown is done
  spawn "$K_PID" "$K_LOGS/kafka.out" \
    "$JAVA" "${KAFKA_JAVA_OPTS[@]}" -Dkafka.logs.dir="$K_LOGS" \
    -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.xml" \
    -Dlog4j2.shutdownHookEnabled=false \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$K_DIR/server.properties"
}

# real protocol check: the broker answers ApiVersions (tool from kafka-tools)
kafka_answers() {
  port_open "$K_PORT" &&
    kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand \
      --bootstrap-server "127.0.0.1:$K_PORT" --command-config "$K_DIR/admin.properties" >/dev/null 2>&1
}

# ---------------------------------------------------------------- Neo4j

neo4j_pid() { live_pid "$RUN/neo4j.pid" Neo4jLauncher; }

neo4j_start() {
  neo4j_pid >/dev/null && return 0
  require_free_port "$NEO4J_BOLT_PORT" "Neo4j Bolt" UDS3_NEO4J_BOLT_PORT
  mkdir -p "$DATA/neo4j" "$LOGS/neo4j"
  rm -f "$RUN/neo4j.ready"
  log "starting Neo4j $NEO4J_VERSION on bolt://127.0.0.1:$NEO4J_BOLT_PORT"
  spawn "$RUN/neo4j.pid" "$LOGS/neo4j/neo4j.out" \
    "$JAVA" "${NEO4J_JAVA_OPTS[@]}" -cp "$NEO4J_CLASSES:$NEO4J_LIB/*" Neo4jLauncher \
    "$DATA/neo4j" "$LOGS/neo4j" "$NEO4J_BOLT_PORT" "$RUN/neo4j.ready"
}

# Bolt handshake: magic 0x6060B017 + proposed versions (5.8..5.0, 4.4); a non-zero
# reply is the agreed version, i.e. the Bolt server really speaks.
bolt_handshake() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$NEO4J_BOLT_PORT" &&
    printf '\x60\x60\xb0\x17\x00\x08\x08\x05\x00\x00\x04\x04\x00\x00\x00\x00\x00\x00\x00\x00' >&3 &&
    timeout 3 head -c 4 <&3 | od -An -tx1 | tr -d ' \n') 2>/dev/null) || return 1
  [[ -n $reply && $reply != 00000000 ]]
}

# the launcher writes the ready file after CALL dbms.components() succeeded
neo4j_answers() { [[ -s $RUN/neo4j.ready ]] && bolt_handshake; }

# ---------------------------------------------------------------- milvus-lite

milvus_pid() { live_pid "$RUN/milvus.pid" "milvus_lite server"; }

milvus_start() {
  milvus_pid >/dev/null && return 0
  [[ -x $PYTHON ]] || die "no $PYTHON: milvus-lite comes from the project's virtual environment (make venv, or set UDS3_PYTHON)"
  require_free_port "$MILVUS_PORT" "milvus-lite" UDS3_MILVUS_PORT
  mkdir -p "$DATA/milvus" "$LOGS/milvus"
  log "starting milvus-lite on 127.0.0.1:$MILVUS_PORT"
  spawn "$RUN/milvus.pid" "$LOGS/milvus/milvus.out" \
    "$PYTHON" -m milvus_lite server --data-dir "$DATA/milvus" --host 127.0.0.1 --port "$MILVUS_PORT"
}

# a real call, not only an open port: the server lists its collections
milvus_answers() {
  port_open "$MILVUS_PORT" && "$PYTHON" -c "from pymilvus import MilvusClient
MilvusClient(uri='http://127.0.0.1:$MILVUS_PORT', timeout=5).list_collections()" >/dev/null 2>&1
}

# ---------------------------------------------------------------- s3proxy

s3proxy_pid() { live_pid "$RUN/s3proxy.pid" org.gaul.s3proxy.Main; }

s3proxy_start() {
  s3proxy_pid >/dev/null && return 0
  mkdir -p "$DATA/s3" "$LOGS/s3proxy"
  (umask 077 && cat >"$DATA/s3proxy.conf" <<EOF
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=uds3
s3proxy.credential=$UDS3_S3_SECRET
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir=$DATA/s3
jclouds.identity=local
jclouds.credential=local
EOF
  )
  log "starting s3proxy $S3PROXY_VERSION on http://127.0.0.1:$S3_PORT"
  spawn "$RUN/s3proxy.pid" "$LOGS/s3proxy/s3proxy.out" \
    "$JAVA" -Xms64m -Xmx256m -Dlogback.configurationFile="$INFRA_DIR/s3proxy/logback.xml" \
    -cp "$S3PROXY_LIB/*" org.gaul.s3proxy.Main --properties "$DATA/s3proxy.conf"
}

# any HTTP answer (403 to an anonymous request) means the server serves
s3proxy_answers() {
  port_open "$S3_PORT" && [[ $( (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT" &&
    printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && timeout 3 head -c 12 <&3) 2>/dev/null) == HTTP/1.1* ]]
}

# ---------------------------------------------------------------- PostgreSQL

# The postgres OS user must be able to enter the stack folder. When it cannot (a checkout
# under a private 0700 directory, as `mktemp -d` makes), the cluster lives in a folder of
# its own under postgres's home instead, linked from the stack folder so it is still found.
pg_locate() {
  id postgres >/dev/null 2>&1 || return 0
  mkdir -p "$DATA" "$LOGS"
  as_postgres test -x "$STACK_DIR" && return 0
  local home
  home=$(getent passwd postgres | cut -d: -f6)/uds3-$(printf '%s' "$STACK_DIR" | sha1sum | cut -c1-12)
  PG_DATA=$home/data PG_SOCK=$home/run PG_LOGS=$home/logs
  mkdir -p "$home" && chown postgres:postgres "$home"
  ln -sfn "$PG_DATA" "$DATA/postgres"
  ln -sfn "$PG_LOGS" "$LOGS/postgres"
}

pg_pid() { live_pid "$PG_DATA/postmaster.pid" postgres; }

pg_init_once() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  log "creating PostgreSQL $PG_MAJOR cluster in $PG_DATA"
  mkdir -p "$PG_DATA" && chown postgres:postgres "$PG_DATA" && chmod 700 "$PG_DATA"
  # local socket: peer (the postgres OS user administers); TCP: passwords (scram)
  as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$PG_LOGS/initdb.log" 2>&1 ||
    { tail -n 20 "$PG_LOGS/initdb.log" >&2; die "initdb failed"; }
  # port and socket dir are passed by pg_ctl at every start (so env vars apply)
  cat >>"$PG_DATA/postgresql.conf" <<'EOF'

# ---- uds3 local stack (infra/stack.sh); port/socket dir are given on the pg_ctl command line
listen_addresses = '127.0.0.1'
max_connections = 200
password_encryption = scram-sha-256
EOF
}

pg_start() {
  mkdir -p "$PG_LOGS" "$PG_SOCK"
  chown postgres:postgres "$PG_LOGS" "$PG_SOCK"
  pg_init_once
  pg_pid >/dev/null && return 0
  require_free_port "$PG_PORT" "PostgreSQL" UDS3_PG_PORT
  log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT"
  # pg_ctl daemonizes the postmaster and (-w) waits until it accepts connections;
  # PostgreSQL starts in about a second while the JVMs started before keep booting
  as_postgres "$PG_BIN/pg_ctl" start -w -t "$UP_TIMEOUT" -D "$PG_DATA" \
    -l "$PG_LOGS/postgres.log" -o "-p $PG_PORT -k $PG_SOCK" 9>&- >/dev/null ||
    { show_logs "$PG_LOGS"; die "PostgreSQL failed to start (logs above)"; }
}

pg_answers() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

# role + database for the project; idempotent, run on every up
pg_ensure_role() {
  as_postgres "$PG_BIN/psql" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -qAt >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'uds3') THEN
    CREATE ROLE uds3 LOGIN SUPERUSER PASSWORD 'uds3';
  END IF;
END $$;
SELECT 'CREATE DATABASE uds3 OWNER uds3'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'uds3')\gexec
SQL
}

# ---------------------------------------------------------------- commands

lock_stack() {  # serialize concurrent up/down calls
  mkdir -p "$RUN"
  exec 9>"$RUN/stack.lock"
  flock -w 300 9 || die "another infra/stack.sh is still running (lock $RUN/stack.lock)"
}

cmd_up() {
  lock_stack
  cmd_fetch
  mkdir -p "$DATA" "$LOGS"
  # check every port before starting anything, so a clash leaves nothing half-started
  local n
  for n in $(kafka_selected); do
    kafka_node "$n"
    kafka_pid >/dev/null || {
      require_free_port "$K_PORT" "$K_NAME" "$([[ $n == 0 ]] && echo UDS3_KAFKA_PORT || echo UDS3_KAFKA_CLUSTER_PORT)"
      require_free_port "$K_CTRL" "$K_NAME controller" \
        "$([[ $n == 0 ]] && echo UDS3_KAFKA_CONTROLLER_PORT || echo UDS3_KAFKA_CLUSTER_PORT)"
    }
  done
  neo4j_pid >/dev/null || require_free_port "$NEO4J_BOLT_PORT" "Neo4j Bolt" UDS3_NEO4J_BOLT_PORT
  pg_pid >/dev/null || require_free_port "$PG_PORT" "PostgreSQL" UDS3_PG_PORT
  milvus_pid >/dev/null || require_free_port "$MILVUS_PORT" "milvus-lite" UDS3_MILVUS_PORT
  s3proxy_pid >/dev/null || require_free_port "$S3_PORT" "s3proxy" UDS3_S3_PORT
  # start all of them first, then wait, so the JVM startups overlap
  for n in $(kafka_selected); do kafka_node "$n"; kafka_start; done
  neo4j_start
  pg_start
  milvus_start
  s3proxy_start
  wait_for PostgreSQL "$PG_LOGS" "$PG_DATA/postmaster.pid" postgres pg_answers
  pg_ensure_role
  wait_for Neo4j "$LOGS/neo4j" "$RUN/neo4j.pid" Neo4jLauncher neo4j_answers
  for n in $(kafka_selected); do
    kafka_node "$n"
    wait_for "$K_NAME" "$K_LOGS" "$K_PID" "$K_DIR/server.properties" kafka_answers
  done
  wait_for milvus-lite "$LOGS/milvus" "$RUN/milvus.pid" "milvus_lite server" milvus_answers
  wait_for s3proxy "$LOGS/s3proxy" "$RUN/s3proxy.pid" org.gaul.s3proxy.Main s3proxy_answers
  cmd_status
  log "ready: kafka SASL/SCRAM admin@$(kafka_bootstrap)  bolt://neo4j@127.0.0.1:$NEO4J_BOLT_PORT  postgresql://uds3:uds3@127.0.0.1:$PG_PORT/uds3  http://127.0.0.1:$MILVUS_PORT (milvus-lite)  http://127.0.0.1:$S3_PORT (s3proxy)"
}

cmd_down() {
  lock_stack
  local kpids=() kpid npid ppid mpid spid n
  # SIGTERM the JVMs first so their shutdowns (Kafka: controlled shutdown, Neo4j: checkpoint
  # via the launcher's shutdown hook) run in parallel; every Kafka node, of both profiles
  for n in 0 1 2 3; do
    kafka_node "$n"
    if kpid=$(kafka_pid); then log "stopping $K_NAME (pid $kpid)"; kill -TERM "$kpid" 2>/dev/null || true; kpids+=("$kpid"); fi
  done
  if npid=$(neo4j_pid); then log "stopping Neo4j (pid $npid)"; kill -TERM "$npid" 2>/dev/null || true; fi
  if mpid=$(milvus_pid); then log "stopping milvus-lite (pid $mpid)"; kill -TERM "$mpid" 2>/dev/null || true; fi
  if spid=$(s3proxy_pid); then log "stopping s3proxy (pid $spid)"; kill -TERM "$spid" 2>/dev/null || true; fi
  if ppid=$(pg_pid); then
    log "stopping PostgreSQL (pid $ppid)"
    # fast = roll back open transactions, then a clean shutdown checkpoint
    as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" >/dev/null ||
      { kill -TERM "$ppid" 2>/dev/null; wait_stopped "$ppid" PostgreSQL; }
  fi
  for kpid in "${kpids[@]}"; do wait_stopped "$kpid" Kafka; done
  [[ -z ${npid:-} ]] || wait_stopped "$npid" Neo4j
  [[ -z ${mpid:-} ]] || wait_stopped "$mpid" milvus-lite
  [[ -z ${spid:-} ]] || wait_stopped "$spid" s3proxy
  rm -f "$RUN"/kafka*.pid "$RUN/neo4j.pid" "$RUN/neo4j.ready" "$RUN/milvus.pid" "$RUN/s3proxy.pid"
  log "stack stopped"
}

cmd_down_cluster() {  # the cluster profile's nodes only (the single node and the rest stay)
  lock_stack
  local n kpid kpids=()
  for n in 1 2 3; do
    kafka_node "$n"
    if kpid=$(kafka_pid); then log "stopping $K_NAME (pid $kpid)"; kill -TERM "$kpid" 2>/dev/null || true; kpids+=("$kpid"); fi
  done
  for kpid in "${kpids[@]}"; do wait_stopped "$kpid" Kafka; done
  rm -f "$RUN"/kafka-[123].pid
}

status_line() {
  local name=$1 pid=$2 port=$3 state=stopped
  if [[ -n $pid ]]; then
    state=running
    port_open "$port" || state="starting (port not open yet)"
  fi
  printf '%-9s %-30s pid=%-8s port=%s\n' "$name" "$state" "${pid:--}" "$port"
}

cmd_status() {
  local n
  for n in 0 1 2 3; do  # the single node always; the cluster's nodes when selected or running
    kafka_node "$n"
    local pid
    pid=$(kafka_pid || true)
    ((n == 0 || KAFKA_NODES > 1)) || [[ -n $pid ]] || continue
    status_line "$([[ $n == 0 ]] && echo kafka || echo "kafka-$n")" "$pid" "$K_PORT"
  done
  status_line neo4j "$(neo4j_pid || true)" "$NEO4J_BOLT_PORT"
  status_line postgres "$(pg_pid || true)" "$PG_PORT"
  status_line milvus "$(milvus_pid || true)" "$MILVUS_PORT"
  status_line s3proxy "$(s3proxy_pid || true)" "$S3_PORT"
}

cmd_logs() {
  local which=${1:-all}
  case $which in
    kafka | all) tail -n 30 "$LOGS/kafka/server.log" 2>/dev/null | sed 's/^/kafka| /'
      for n in 1 2 3; do tail -n 10 "$LOGS/kafka-$n/server.log" 2>/dev/null | sed "s/^/kafka-$n| /"; done ;;&
    neo4j | all) tail -n 30 "$LOGS/neo4j/neo4j.out" 2>/dev/null | sed 's/^/neo4j| /' ;;&
    postgres | all) tail -n 30 "$PG_LOGS/postgres.log" 2>/dev/null | sed 's/^/postgres| /' ;;&
    milvus | all) tail -n 30 "$LOGS/milvus/milvus.out" 2>/dev/null | sed 's/^/milvus| /' ;;&
    s3proxy | all) tail -n 30 "$LOGS/s3proxy/s3proxy.out" 2>/dev/null | sed 's/^/s3proxy| /' ;;&
    kafka | neo4j | postgres | milvus | s3proxy | all) ;;
    *) die "logs: unknown server '$which' (kafka|neo4j|postgres|milvus|s3proxy)" ;;
  esac
}

main() {
  local cmd=${1:-}
  shift || true
  pg_locate
  case $cmd in
    fetch) lock_stack; cmd_fetch ;;
    up) cmd_up ;;
    down) cmd_down ;;
    down-cluster) cmd_down_cluster ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    *) echo "usage: bash infra/stack.sh fetch|up|down|down-cluster|status|logs [kafka|neo4j|postgres|milvus|s3proxy]" >&2; exit 2 ;;
  esac
}

main "$@"
