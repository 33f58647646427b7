#!/usr/bin/env bash
# load.sh: meshd under an open-loop load beside nginx and HAProxy, in one
# interleaved run on 127.0.0.1: latency at fixed request rates (vegeta),
# the saturation rate of each target, twice that rate offered for a while
# (goodput, refusals, no answers), recovery right after, the fixed rates
# again beside a CPU-bound neighbour process, and the resident memory of
# every meshd node. Prints a table with ratios to nginx and checks meshd's
# load targets. See bench/README.md.
#
#   sudo bench/load.sh               # about 9 min: 10 s per step
#   sudo QUICK=1 bench/load.sh       # smoke run, about 2 min: 2 s per step
#   knobs: DURATION RATES CLIENT_CONNS SAT_DURATION SAT_WORKERS OVERLOAD OVER_DURATION OVER_CONNS
#          RECOVERY_WAIT RECOVERY_RATE CHECK_RATE NEIGHBOURS TIMEOUT WARMUP IDLE_SECONDS
#          MAX_CONNS_PER_IP SKIP_NGINX SKIP_HAPROXY SKIP_FULL SKIP_PAIR
#          SKIP_OVERLOAD SKIP_NEIGHBOUR SCHEME MESHD MESHD_LOG_LEVEL KEEP QUICK PIN
set -euo pipefail

QUICK="${QUICK:-0}"
step=10
[[ $QUICK == 1 ]] && step=2
DURATION="${DURATION:-$step}"               # seconds of each fixed-rate step
RATES="${RATES:-500 1000 2000}"             # fixed request rates, req/s
CLIENT_CONNS="${CLIENT_CONNS:-100}"         # client connections of the fixed-rate steps (vegeta -max-connections)
SAT_DURATION="${SAT_DURATION:-$((step / 2))}" # seconds of the closed-loop saturation run
SAT_WORKERS="${SAT_WORKERS:-50}"            # its concurrent requests (vegeta -max-workers)
OVERLOAD="${OVERLOAD:-2}"                   # offered rate = OVERLOAD × saturation rate
OVER_DURATION="${OVER_DURATION:-$step}"     # seconds of the overload step
OVER_CONNS="${OVER_CONNS:-1000}"            # client connections then (vegeta -max-connections)
RECOVERY_WAIT="${RECOVERY_WAIT:-5}"         # seconds between overload and recovery
RECOVERY_RATE="${RECOVERY_RATE:-1000}"      # req/s of the recovery step
CHECK_RATE="${CHECK_RATE:-1000}"            # the rate whose p99 and RSS the targets check
NEIGHBOURS="${NEIGHBOURS:-1}"               # CPU-bound busy loops of the neighbour phase
TIMEOUT="${TIMEOUT:-2s}"                    # vegeta -timeout per request
MAX_CONNS_PER_IP="${MAX_CONNS_PER_IP:--1}"  # the edge's --max-conns-per-ip (empty: meshd's default)
SCHEME="${SCHEME:-https}"                   # https (as edge-tls.sh) or http: client -> nginx, HAProxy, edge
IDLE_SECONDS="${IDLE_SECONDS:-3}"           # seconds over which each target's idle CPU is read
RECOVERY_FACTOR=2                           # recovery p99 <= this × the quiet p99 at RECOVERY_RATE
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bad knobs stop the run before anything starts, naming the variable.
for v in DURATION CLIENT_CONNS SAT_DURATION SAT_WORKERS OVER_DURATION OVER_CONNS RECOVERY_RATE CHECK_RATE IDLE_SECONDS; do
	[[ "${!v:-1}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number, not '${!v}'"
done
for v in RECOVERY_WAIT NEIGHBOURS WARMUP; do
	[[ "${!v:-0}" =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[[ "$OVERLOAD" =~ ^[0-9]+(\.[0-9]+)?$ && "$OVERLOAD" != 0 ]] || die "OVERLOAD must be a positive number, not '$OVERLOAD'"
for r in $RATES; do [[ "$r" =~ ^[1-9][0-9]*$ ]] || die "RATES must be positive whole numbers, not '$r'"; done
[[ -n "${RATES// /}" ]] || die "RATES is empty"
[[ " $RATES " == *" $CHECK_RATE "* ]] || log "CHECK_RATE $CHECK_RATE is not among RATES ($RATES): its targets will show '-'"
[[ -z "$MAX_CONNS_PER_IP" || "$MAX_CONNS_PER_IP" =~ ^(-1|[1-9][0-9]*)$ ]] || die "MAX_CONNS_PER_IP must be -1, a positive number or empty, not '$MAX_CONNS_PER_IP'"
[[ $SCHEME == https || $SCHEME == http ]] || die "SCHEME must be https or http, not '$SCHEME'"
# PIN=1: vegeta on the first core, every server (and the neighbour) on the
# others, so that past saturation the load generator does not take the
# servers' CPU; with every process on every core, 2x saturation starves
# whoever answers (nginx included) and measures the generator as much as
# the targets.
PIN="${PIN:-0}"
if [[ $PIN == 1 ]]; then
	ncpu="$(nproc)"
	((ncpu >= 2)) || die "PIN=1 needs at least 2 cores, this machine has $ncpu"
	command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
	export GEN_CPUS=0 SERVER_CPUS="1-$((ncpu - 1))"
elif [[ $PIN != 0 ]]; then
	die "PIN must be 0 or 1, not '$PIN'"
fi
setup
MACHINE="$(machine_line)"
need curl:curl openssl:openssl nginx:nginx haproxy:haproxy
build
need_vegeta
# Overload opens thousands of connections; every server started from here
# on, and vegeta, inherits the limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"

ports 9 # sets PORTS
# shellcheck disable=SC2153 # PORTS is set by ports in lib.sh
ORIGIN_PORT=${PORTS[0]} MESHD_HTTP=${PORTS[1]} MESHD_HTTPS=${PORTS[2]} NGINX_HTTPS=${PORTS[3]} HAPROXY_HTTPS=${PORTS[4]}
CL_LISTEN=${PORTS[5]} CL_OUTBOUND=${PORTS[6]} CL_GOSSIP=${PORTS[7]} CL_ADMIN=${PORTS[8]}
TARGET="/nostore/1k" # 1 KiB, no-store: nothing is cached anywhere, every request reaches the app
HOST=web.localhost

start_origin

# meshd full path: edge (HTTPS, cache off) -> gateway -> sidecar web-1 ->
# app. All load comes from 127.0.0.1, so the edge's per-client-IP
# connection limit would turn overload into refused connections of one
# "client"; it is lifted unless MAX_CONNS_PER_IP says otherwise.
EDGE_ARGS=()
[[ -n "$MAX_CONNS_PER_IP" ]] && EDGE_ARGS=(--max-conns-per-ip "$MAX_CONNS_PER_IP")
start_mesh 0 "$MESHD_HTTP" "$MESHD_HTTPS"

# meshd sidecar pair: the client app (vegeta) calls http://web.mesh/
# through the outbound listener of its own sidecar client-1, which
# forwards over mTLS to web-1, the sidecar in front of the app.
start meshd-client "$WORK/bin/meshd" run --role sidecar --name client-1 --service client "${MESH_COMMON[@]}" \
	--upstream "127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:$CL_LISTEN" --outbound "127.0.0.1:$CL_OUTBOUND" \
	--gossip-addr "127.0.0.1:$CL_GOSSIP" --join "$MESH_JOIN" --admin "127.0.0.1:$CL_ADMIN"
CL_PID=$PID
wait_ok "client sidecar /readyz" "$CL_PID" meshd-client "http://127.0.0.1:$CL_ADMIN/readyz"

# nginx: TLS terminator in front of the app, as in edge-tls.sh (or a
# plain HTTP proxy with SCHEME=http).
self_signed server
NGINX_PORT=$NGINX_HTTPS NGINX_TLS=" ssl http2"
[[ $SCHEME == https ]] || NGINX_TLS=""
mkdir -p "$WORK/nginx"
{
nginx_conf_head
cat <<EOF
	upstream app {
		server 127.0.0.1:$ORIGIN_PORT;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:$NGINX_PORT$NGINX_TLS;
		server_name $HOST;
		ssl_certificate $WORK/tls/server.crt;
		ssl_certificate_key $WORK/tls/server.key;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_session_cache shared:SSL:10m;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host \$host;
			proxy_set_header X-Forwarded-For \$remote_addr;
		}
	}
}
EOF
} >"$WORK/nginx/nginx.conf"
[[ "${SKIP_NGINX:-0}" == 1 ]] || start_nginx

# HAProxy: the same hop, TLS with the same certificate, keep-alive to the
# app with idle connections shared between clients (http-reuse always),
# threads by default one per core, no log, as many connections as the
# file limit allows (two descriptors each: client and app).
mkdir -p "$WORK/haproxy"
HAPROXY_TLS=" ssl crt $WORK/tls/server.pem alpn h2,http/1.1"
[[ $SCHEME == https ]] || HAPROXY_TLS=""
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
	maxconn $((NOFILE / 2 - 100))
	ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
	mode http
	option http-keep-alive
	option forwardfor
	http-reuse always
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-keep-alive 60s
frontend web
	bind 127.0.0.1:$HAPROXY_HTTPS$HAPROXY_TLS
	default_backend app
backend app
	server app 127.0.0.1:$ORIGIN_PORT
EOF
if [[ "${SKIP_HAPROXY:-0}" != 1 ]]; then
	haproxy -c -f "$WORK/haproxy/haproxy.cfg" >"$WORK/logs/haproxy-c.log" 2>&1 ||
		die "haproxy config: $(cat "$WORK/logs/haproxy-c.log")"
	start haproxy haproxy -db -f "$WORK/haproxy/haproxy.cfg"
	HAPROXY_PID=$PID
fi

# The targets: URL, vegeta arguments (words), processes whose CPU counts,
# the process that must stay alive. nginx, HAProxy and the edge are called
# by name (SNI and Host web.localhost) with vegeta's -connect-to pointing
# the name at 127.0.0.1; with SCHEME=http on the same ports, except the
# edge, which has a port of its own for plain HTTP.
MESHD_PUBLIC=$MESHD_HTTPS
[[ $SCHEME == https ]] || MESHD_PUBLIC=$MESHD_HTTP
TARGETS=()
declare -A URL VARGS SPIDS MAINPID
add_target() { TARGETS+=("$1"); URL[$1]=$2; VARGS[$1]=$3; SPIDS[$1]=$4; MAINPID[$1]=$5; }
tls_url() { echo "$SCHEME://$HOST:$1$TARGET"; }
tls_args() { echo "-connect-to $HOST:$1:127.0.0.1:$1"; }
[[ "${SKIP_NGINX:-0}" == 1 ]] || add_target nginx "$(tls_url "$NGINX_HTTPS")" "$(tls_args "$NGINX_HTTPS")" "$NGINX_PID" "$NGINX_PID"
[[ "${SKIP_HAPROXY:-0}" == 1 ]] || add_target haproxy "$(tls_url "$HAPROXY_HTTPS")" "$(tls_args "$HAPROXY_HTTPS")" "$HAPROXY_PID" "$HAPROXY_PID"
[[ "${SKIP_FULL:-0}" == 1 ]] || add_target meshd-full "$(tls_url "$MESHD_PUBLIC")" "$(tls_args "$MESHD_PUBLIC")" "$EDGE_PID $GW_PID $SC_PID" "$EDGE_PID"
[[ "${SKIP_PAIR:-0}" == 1 ]] || add_target meshd-pair "http://127.0.0.1:$CL_OUTBOUND$TARGET" "-header Host:web.mesh" "$CL_PID $SC_PID" "$CL_PID"
((${#TARGETS[@]})) || die "every target is skipped"

declare -A NODE=([edge]=$EDGE_PID [gateway]=$GW_PID [sidecar-web]=$SC_PID [sidecar-client]=$CL_PID)
NODES=(edge gateway sidecar-web sidecar-client)

# curl_target T prints the status and body size of one request through T.
curl_target() {
	local t=$1
	if [[ $t == meshd-pair ]]; then
		curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 2 -H "Host: web.mesh" "${URL[$t]}"
	else
		local port=${URL[$t]##*:}
		port=${port%%/*}
		curl -s -k -o /dev/null -w '%{http_code} %{size_download}' --max-time 2 --http1.1 \
			--resolve "$HOST:$port:127.0.0.1" "${URL[$t]}"
	fi
}

# Every target must answer the 1 KiB object before anything is measured;
# the client sidecar needs the gossip round that tells it where web runs.
for t in "${TARGETS[@]}"; do
	for ((n = 0; n < 300; n++)); do
		alive "${MAINPID[$t]}" "$t"
		got="$(curl_target "$t" || true)"
		[[ "$got" == "200 1024" ]] && break
		sleep 0.2
	done
	[[ "$got" == "200 1024" ]] || die "$t does not answer $TARGET with 200 and 1024 bytes (got: $got)"
done

alive_all() {
	local t n
	for t in "${TARGETS[@]}"; do alive "${MAINPID[$t]}" "$t"; done
	for n in "${NODES[@]}"; do alive "${NODE[$n]}" "meshd-${n#sidecar-}"; done
}

# rss_all WHEN appends "WHEN NODE MIB" for every meshd node to $WORK/rss.
rss_all() {
	local n
	for n in "${NODES[@]}"; do echo "$1 $n $(rss_mib "${NODE[$n]}")" >>"$WORK/rss"; done
}
: >"$WORK/rss"
# A node drops the binary's pages its start-up mapped 5 s after it is
# ready (pages.go); idle memory is read once every node has.
sleep 6
rss_all idle

# The CPU each target burns without load (meshd: gossip, health checks,
# timers), so CPU per request at low rates can be read net of it.
declare -A IDLE0 IDLE_CORES
for t in "${TARGETS[@]}"; do
	read -r -a pids <<<"${SPIDS[$t]}"
	IDLE0[$t]="$(ticks "${pids[@]}")"
done
sleep "$IDLE_SECONDS"
for t in "${TARGETS[@]}"; do
	read -r -a pids <<<"${SPIDS[$t]}"
	IDLE_CORES[$t]="$(awk -v d=$(($(ticks "${pids[@]}") - IDLE0[$t])) -v hz="$CLK_TCK" -v s="$IDLE_SECONDS" 'BEGIN { printf "%.3f", d / hz / s }')"
done

# order I prints the targets rotated by I, so no target always runs first
# (right after a pause) or last in a step.
order() {
	local i k=${#TARGETS[@]}
	for ((i = 0; i < k; i++)); do echo "${TARGETS[(i + $1) % k]}"; done
}

# run KEY TARGET SECONDS RATE [VEGETA ARGS...] runs one attack and appends
# "KEY <parse_vegeta fields> CPU_US/REQ GEN_CORES" to $WORK/load-samples:
# the CPU of the target's processes per request, and the cores vegeta used.
: >"$WORK/load-samples"
run() {
	local key=$1 t=$2 secs=$3 rate=$4 res t0 t1 n cpu gen pids extra
	shift 4
	read -r -a pids <<<"${SPIDS[$t]}"
	read -r -a extra <<<"${VARGS[$t]}"
	t0="$(ticks "${pids[@]}")"
	res="$(attack "$WORK/out/${key//\//-}" "$secs" "$rate" "${URL[$t]}" "${extra[@]}" "$@")" || exit 1
	t1="$(ticks "${pids[@]}")"
	n="${res%% *}"
	cpu="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')"
	gen="$(awk -v g="${res##* }" -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.2f", g / hz / s }')"
	res="${res% *}"
	echo "$key $res $cpu $gen" >>"$WORK/load-samples"
	# shellcheck disable=SC2086 # res is a list of fields
	set -- $res
	log "$(printf '%-28s %6s req  %6s 2xx  %5s refused  %5s no answer  p99 %8s ms  (answers %s ms)' "$key" "$1" "$2" "$3" "$4" "$8" "${10}")"
	alive_all
}

# get KEY FIELD prints one field of a sample (2 requests, 3 ok, 4 refused,
# 5 no answer, 6 goodput/s, 7 p50, 8 p90, 9 p99, 10 max, 11 answered p99,
# 12 refused p99, 13 codes, 14 CPU µs/req, 15 vegeta's cores), or "-"
# when there is none.
get() { awk -v k="$1" -v f="$2" '$1 == k { v = $f } END { print (v == "" ? "-" : v) }' "$WORK/load-samples"; }

log "warm-up: ${WARMUP}s per target at 500 req/s"
for t in "${TARGETS[@]}"; do
	read -r -a extra <<<"${VARGS[$t]}"
	_="$(attack "$WORK/out/warm-$t" "$WARMUP" 500 "${URL[$t]}" "${extra[@]}" -max-connections="$CLIENT_CONNS")" || exit 1
done

# steady PHASE runs every rate through every target, interleaved.
steady() {
	local phase=$1 i=0 rate t
	for rate in $RATES; do
		for t in $(order "$i"); do
			run "$phase/$rate/$t" "$t" "$DURATION" "$rate" -max-connections="$CLIENT_CONNS"
		done
		[[ $phase == quiet && $rate == "$CHECK_RATE" ]] && rss_all "after-$CHECK_RATE"
		i=$((i + 1))
	done
}

log "quiet: rates $RATES, ${DURATION}s each, targets interleaved"
steady quiet

declare -A SAT
if [[ "${SKIP_OVERLOAD:-0}" != 1 ]]; then
	log "saturation: $SAT_WORKERS workers as fast as answered, ${SAT_DURATION}s per target"
	for t in $(order 0); do
		run "sat/$t" "$t" "$SAT_DURATION" 0 -max-workers="$SAT_WORKERS"
		SAT[$t]="$(awk -v g="$(get "sat/$t" 6)" 'BEGIN { printf "%d", g }')"
		((SAT[$t] > 0)) || die "$t answered nothing at saturation"
	done
	for t in $(order 1); do
		offered=$(awk -v s="${SAT[$t]}" -v f="$OVERLOAD" 'BEGIN { printf "%d", s * f + 0.5 }')
		log "overload $t: $offered req/s (${OVERLOAD}x its saturation rate ${SAT[$t]}) for ${OVER_DURATION}s, then ${RECOVERY_RATE} req/s after ${RECOVERY_WAIT}s"
		run "over/$t" "$t" "$OVER_DURATION" "$offered" -max-connections="$OVER_CONNS"
		echo "over/$t $offered" >>"$WORK/offered"
		sleep "$RECOVERY_WAIT"
		run "recovery/$t" "$t" "$DURATION" "$RECOVERY_RATE" -max-connections="$CLIENT_CONNS"
	done
	rss_all after-overload
fi

if [[ "${SKIP_NEIGHBOUR:-0}" != 1 ]]; then
	log "neighbour: $NEIGHBOURS CPU-bound busy loop(s) beside the same steps"
	HOGS=()
	for ((i = 0; i < NEIGHBOURS; i++)); do
		start "neighbour-$i" bash -c 'while :; do :; done'
		HOGS+=("$PID")
	done
	steady neighbour
	for pid in "${HOGS[@]}"; do stop "$pid"; done
fi
HWM=1 rss_all peak

# refusals PID prints the node's meshd_admission_rejected_total: requests
# its admission control refused over the whole run, or "-".
refusals() {
	local admin
	admin="$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | awk 'p { print; exit } $0 == "--admin" { p = 1 }')"
	[[ -n "$admin" ]] || { echo -; return; }
	curl -s --max-time 2 "http://$admin/metrics" |
		awk '/^meshd_admission_rejected_total/ { v += $NF; found = 1 } END { print (found ? v : "-") }'
}
declare -A REFUSED
for n in "${NODES[@]}"; do REFUSED[$n]="$(refusals "${NODE[$n]}")"; done

# The table.
DATE="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$BENCH_DIR/results"
RESULT="$BENCH_DIR/results/load-$DATE.txt"
rss() { awk -v w="$1" -v n="$2" '$1 == w && $2 == n { v = $3 } END { print (v == "" ? "-" : v) }' "$WORK/rss"; }
# times_x R prints a ratio as "Rx", or "-" when there is none.
times_x() { [[ "$1" == - ]] && echo - || echo "${1}x"; }
# p99x A B prints A's p99 over B's for one key prefix, or "-".
p99x() { ratio "$(get "$1/$2" 9)" "$(get "$1/nginx" 9)"; }
{
	echo "load: GET $TARGET (1 KiB, Cache-Control: no-store), vegeta $VEGETA_VERSION over HTTP/1.1, -timeout $TIMEOUT, all on 127.0.0.1"
	echo "  nginx, haproxy = $SCHEME -> proxy -> app (one hop)"
	echo "  meshd-full = $SCHEME -> edge (cache off) -> gateway -> sidecar -> app, mTLS between the hops"
	echo "  meshd-pair = client app (plain HTTP, Host web.mesh) -> client sidecar's outbound listener -> mTLS -> server sidecar -> app"
	echo "  steps of ${DURATION}s, targets interleaved per step, open loop over at most $CLIENT_CONNS client connections (a request"
	echo "  that finds all busy waits in vegeta, and its wait counts in its latency); overload ${OVERLOAD}x the closed-loop rate of $SAT_WORKERS workers;"
	echo "  neighbour = $NEIGHBOURS CPU-bound busy loop(s) running beside the whole phase; CPU = utime+stime of the target's processes per request;"
	echo "  gen = cores vegeta itself used during the step (it runs on the same machine)"
	[[ $PIN == 1 ]] && echo "  PIN=1: vegeta on core $GEN_CPUS, every server and the neighbour on cores $SERVER_CPUS"
	idle=""
	for t in "${TARGETS[@]}"; do idle+="$t ${IDLE_CORES[$t]}, "; done
	echo "  cores used without load (${IDLE_SECONDS}s before the warm-up): ${idle%, }"
	echo "  $MACHINE"
	echo "  $(versions_line nginx haproxy vegeta)"
	echo
	echo "open loop (latency over every request, ms; errors = non-2xx + no answer; p99x = p99 / nginx's p99 in the same phase and rate)"
	printf '%-9s %5s %-11s %8s %8s %8s %8s %8s %7s %7s %9s %5s\n' phase rate target "sent/s" p50 p90 p99 max errors p99x "CPU µs/r" gen
	for phase in quiet neighbour; do
		for rate in $RATES; do
			for t in "${TARGETS[@]}"; do
				k="$phase/$rate/$t"
				[[ "$(get "$k" 2)" == - ]] && continue
				printf '%-9s %5s %-11s %8.0f %8s %8s %8s %8s %7d %7s %9s %5s\n' "$phase" "$rate" "$t" \
					"$(awk -v n="$(get "$k" 2)" -v d="$DURATION" 'BEGIN { print n / d }')" \
					"$(get "$k" 7)" "$(get "$k" 8)" "$(get "$k" 9)" "$(get "$k" 10)" \
					$(($(get "$k" 4) + $(get "$k" 5))) "$(times_x "$(p99x "$phase/$rate" "$t")")" "$(get "$k" 14)" "$(get "$k" 15)"
			done
		done
	done
	if [[ "${SKIP_OVERLOAD:-0}" != 1 ]]; then
		echo
		echo "overload: saturation = 2xx/s of $SAT_WORKERS closed-loop workers (${SAT_DURATION}s); then ${OVERLOAD}x that offered for ${OVER_DURATION}s"
		echo "  over at most $OVER_CONNS client connections (requests beyond wait in the client, their wait counted, until the timeout);"
		echo "  goodput = 2xx/s completed in the step; p99 ans = p99 of the answered requests; refused = answers that are not 2xx;"
		echo "  recovery = $RECOVERY_RATE req/s for ${DURATION}s, ${RECOVERY_WAIT}s after the overload (its p99 over every request)"
		printf '%-11s %8s %8s %8s %8s %6s %8s %8s %7s  %-24s %5s %8s %6s\n' target "sat/s" "offered" "sent/s" "goodput" "g/sat" \
			"p99 ans" "p99 ref" "no ans" codes gen "rec p99" "rec er"
		for t in "${TARGETS[@]}"; do
			k="over/$t"
			printf '%-11s %8s %8s %8.0f %8s %6s %8s %8s %6.1f%%  %-24s %5s %8s %6d\n' "$t" "${SAT[$t]}" \
				"$(awk -v k="$k" '$1 == k { print $2 }' "$WORK/offered")" \
				"$(awk -v n="$(get "$k" 2)" -v d="$OVER_DURATION" 'BEGIN { print n / d }')" \
				"$(get "$k" 6)" "$(ratio "$(get "$k" 6)" "${SAT[$t]}")" "$(get "$k" 11)" "$(get "$k" 12)" \
				"$(awk -v a="$(get "$k" 5)" -v n="$(get "$k" 2)" 'BEGIN { print n ? 100 * a / n : 0 }')" \
				"$(get "$k" 13)" "$(get "$k" 15)" "$(get "recovery/$t" 9)" $(($(get "recovery/$t" 4) + $(get "recovery/$t" 5)))
		done
	fi
	echo
	echo "meshd resident memory (VmRSS, MiB; peak = VmHWM at the end) and the requests each node's admission control refused in the run"
	printf '%-15s %6s %12s %15s %6s %8s\n' node idle "after $CHECK_RATE/s" "after overload" peak refused
	for n in "${NODES[@]}"; do
		printf '%-15s %6s %12s %15s %6s %8s\n' "$n" "$(rss idle "$n")" "$(rss "after-$CHECK_RATE" "$n")" "$(rss after-overload "$n")" "$(rss peak "$n")" "${REFUSED[$n]}"
	done
	echo
	echo "targets"
	check() { printf '  %-64s %-34s %s\n' "$1" "$2" "$3"; }
	# is COND VALUES...: pass or FAIL by an awk condition over a, b, c, or
	# "-" when any value is missing (a skipped target or phase).
	is() {
		local cond=$1 v
		shift
		for v in "$@"; do [[ "$v" =~ ^[0-9.]+$ ]] || { echo "-"; return; }; done
		awk -v a="${1:-0}" -v b="${2:-0}" -v c="${3:-0}" "BEGIN { print ($cond) ? \"pass\" : \"FAIL\" }"
	}
	for phase in quiet neighbour; do
		for pair in meshd-full:3 meshd-pair:2; do
			t=${pair%:*} lim=${pair#*:}
			x="$(p99x "$phase/$CHECK_RATE" "$t")"
			check "$t p99 at $CHECK_RATE req/s, $phase: <= ${lim}x nginx's" "$(times_x "$x")" "$(is "a <= $lim" "$x")"
		done
	done
	if [[ "${SKIP_OVERLOAD:-0}" != 1 ]]; then
		for t in meshd-full meshd-pair; do
			g="$(ratio "$(get "over/$t" 6)" "${SAT[$t]:-}")"
			check "$t goodput at ${OVERLOAD}x saturation: >= 0.7x saturation" "$(times_x "$g")" "$(is "a >= 0.7" "$g")"
			r="$(get "over/$t" 12)"
			if [[ "$r" == - && "$(get "over/$t" 2)" != - ]]; then
				check "$t refused answers at ${OVERLOAD}x saturation: p99 <= 10 ms" "none refused" pass
			else
				check "$t refused answers at ${OVERLOAD}x saturation: p99 <= 10 ms" "$r ms" "$(is "a <= 10" "$r")"
			fi
			rp="$(get "recovery/$t" 9)" qp="$(get "quiet/$RECOVERY_RATE/$t" 9)"
			re=-
			[[ "$(get "recovery/$t" 2)" == - ]] || re=$(($(get "recovery/$t" 4) + $(get "recovery/$t" 5)))
			check "$t recovery p99: <= ${RECOVERY_FACTOR}x its quiet p99 at $RECOVERY_RATE, no errors" \
				"$rp ms (quiet $qp), $re err" "$(is "a <= $RECOVERY_FACTOR * b && c == 0" "$rp" "$qp" "$re")"
		done
	fi
	for n in sidecar-web sidecar-client; do
		check "$n RSS idle: <= 20 MiB" "$(rss idle "$n") MiB" "$(is "a <= 20" "$(rss idle "$n")")"
		check "$n RSS after $CHECK_RATE req/s: <= 40 MiB" "$(rss "after-$CHECK_RATE" "$n") MiB" "$(is "a <= 40" "$(rss "after-$CHECK_RATE" "$n")")"
	done
	echo
	echo "meshd log records during the run (level ${MESHD_LOG_LEVEL:-warn} and above), most frequent messages per node:"
	for n in edge gw sidecar client; do
		logf="$WORK/logs/meshd-$n.log"
		[[ -s "$logf" ]] || { echo "  $n: none"; continue; }
		sed -E 's/^time=[^ ]+ //; s/(from|addr)=[^ ]*//g; s/127\.0\.0\.1:[0-9]+//g; s/[0-9]+(\.[0-9]+)?(ms|s|µs)\b/N\2/g' "$logf" |
			cut -c1-160 | sort | uniq -c | sort -rn | head -n 4 | sed "s/^/  $n: /"
	done
	echo
	echo "samples (key requests ok refused no_answer goodput/s p50 p90 p99 max p99_answered p99_refused codes cpu_us/req gen_cores):"
	sed 's/^/  /' "$WORK/load-samples"
} | tee "$RESULT"
echo
echo "written to $RESULT"
