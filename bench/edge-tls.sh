#!/usr/bin/env bash
# edge-tls.sh: HTTPS throughput, p99 latency and CPU per request of meshd's
# front door (edge → gateway → sidecar → app, cache off) beside nginx and
# Caddy terminating TLS in front of the same app, HTTP/1.1 and HTTP/2 with
# h2load, in one interleaved run. See bench/README.md.
#
#   sudo bench/edge-tls.sh                 # 3 rounds × 10 s, 50 connections
#   DURATION=5 ROUNDS=5 bench/edge-tls.sh  # knobs: DURATION ROUNDS CONNS THREADS
#                                          # H2_STREAMS WARMUP OBJECT MESHD KEEP
set -euo pipefail

DURATION="${DURATION:-10}"
# The cost of a hop at saturation, with every request served: the
# adaptive concurrency limit would refuse some of wrk's closed-loop
# requests on a busy machine, and the run stops at the first non-2xx.
# Admission control is load.sh's subject. A meshd older than the flag:
# MESHD_ARGS= (empty).
export MESHD_ARGS="${MESHD_ARGS---concurrency-limit off}"
OBJECT="${OBJECT:-1k}" # 1k or 100k
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

setup
MACHINE="$(machine_line)"
need curl:curl openssl:openssl nginx:nginx caddy:caddy h2load:nghttp2-client
build

ports 5 # sets PORTS
# shellcheck disable=SC2153 # PORTS is set by ports in lib.sh
ORIGIN_PORT=${PORTS[0]} MESHD_HTTP=${PORTS[1]} MESHD_HTTPS=${PORTS[2]} NGINX_HTTPS=${PORTS[3]} CADDY_HTTPS=${PORTS[4]}
TARGET="/nostore/$OBJECT" # no-store: nothing is cached anywhere, every request reaches the app
HOST=web.localhost

start_origin

# meshd: the full mesh path, its cache turned off.
start_mesh 0 "$MESHD_HTTP" "$MESHD_HTTPS"
MESHD_PIDS="$EDGE_PID $GW_PID $SC_PID"

# nginx: TLS terminator with HTTP/2, keep-alive to the app. The request
# limits per connection are raised so neither side reconnects every 1000
# requests, which Go's servers never do.
self_signed nginx
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
		listen 127.0.0.1:$NGINX_HTTPS ssl http2;
		server_name $HOST;
		ssl_certificate $WORK/tls/nginx.crt;
		ssl_certificate_key $WORK/tls/nginx.key;
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
start_nginx

# Caddy: TLS from its internal CA (as meshd's --tls internal), reverse
# proxy to the app. HTTP/3 and the HTTP listener are off: neither is
# measured, and meshd's HTTP/3 listener idles the same way.
mkdir -p "$WORK/caddy"
cat >"$WORK/caddy/Caddyfile" <<EOF
{
	admin off
	auto_https disable_redirects
	skip_install_trust
	storage file_system $WORK/caddy/data
	https_port $CADDY_HTTPS
	servers {
		protocols h1 h2
	}
	log {
		level WARN
	}
}
$HOST:$CADDY_HTTPS {
	bind 127.0.0.1
	tls internal
	reverse_proxy 127.0.0.1:$ORIGIN_PORT
}
EOF
start caddy env HOME="$WORK/caddy" XDG_DATA_HOME="$WORK/caddy" XDG_CONFIG_HOME="$WORK/caddy" \
	caddy run --adapter caddyfile --config "$WORK/caddy/Caddyfile"
CADDY_PID=$PID

SERVERS=(meshd nginx caddy)
declare -A PORT=([meshd]=$MESHD_HTTPS [nginx]=$NGINX_HTTPS [caddy]=$CADDY_HTTPS)
declare -A SPIDS=([meshd]="$MESHD_PIDS" [nginx]="$NGINX_PID" [caddy]="$CADDY_PID")
declare -A MAINPID=([meshd]=$EDGE_PID [nginx]=$NGINX_PID [caddy]=$CADDY_PID)

# Every server must answer the object over HTTP/1.1 and HTTP/2 before
# anything is measured.
for s in "${SERVERS[@]}"; do
	for v in --http1.1 --http2; do
		wait_ok "$s over HTTPS ($v)" "${MAINPID[$s]}" "$s" -k "$v" \
			--resolve "$HOST:${PORT[$s]}:127.0.0.1" "https://$HOST:${PORT[$s]}$TARGET"
	done
	hdrs="$(curl -sk -D - -o /dev/null --http2 --resolve "$HOST:${PORT[$s]}:127.0.0.1" "https://$HOST:${PORT[$s]}$TARGET" | tr -d '\r')"
	grep -q '^HTTP/2 200' <<<"$hdrs" || die "$s does not answer HTTP/2: $hdrs"
	grep -qi '^cache-control: no-store' <<<"$hdrs" || die "$s changed the app's Cache-Control: $hdrs"
done

url() { echo "https://$HOST:${PORT[$1]}$TARGET"; }

log "warm-up: ${WARMUP}s per server and protocol"
for s in "${SERVERS[@]}"; do
	load_h2 "$WORK/out/warm" "$WARMUP" "$(url "$s")" "127.0.0.1:${PORT[$s]}" --h1 >/dev/null
	load_h2 "$WORK/out/warm" "$WARMUP" "$(url "$s")" "127.0.0.1:${PORT[$s]}" >/dev/null
done

: >"$WORK/samples"
: >"$WORK/samples-meshd"
log "measuring: $ROUNDS rounds × ${DURATION}s, servers interleaved"
for ((r = 1; r <= ROUNDS; r++)); do
	for proto in h1 h2; do
		for s in "${SERVERS[@]}"; do
			extra=()
			[[ $proto == h1 ]] && extra=(--h1)
			# meshd's per-hop CPU, for the breakdown under the table.
			e0="$(ticks "$EDGE_PID") $(ticks "$GW_PID") $(ticks "$SC_PID")"
			measure "$proto/$s" "${SPIDS[$s]}" load_h2 "$WORK/out/$proto-$s-$r" "$DURATION" "$(url "$s")" "127.0.0.1:${PORT[$s]}" "${extra[@]}"
			if [[ $s == meshd ]]; then
				e1="$(ticks "$EDGE_PID") $(ticks "$GW_PID") $(ticks "$SC_PID")"
				n="$(awk '/^requests:/ { print $8 }' "$WORK/out/$proto-$s-$r")"
				echo "$proto $e0 $e1 $n" >>"$WORK/samples-meshd"
			fi
			for s2 in "${SERVERS[@]}"; do alive "${MAINPID[$s2]}" "$s2"; done
		done
	done
done

# The table: medians over the rounds, then meshd's ratio to each server.
DATE="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$BENCH_DIR/results"
RESULT="$BENCH_DIR/results/edge-tls-$DATE.txt"
{
	echo "edge-tls: HTTPS GET $TARGET (Cache-Control: no-store), Host $HOST, TLS on 127.0.0.1"
	echo "  meshd = edge -> gateway -> sidecar -> app (mTLS between hops, cache off); nginx, caddy = TLS terminator -> app"
	echo "  h2load -t $THREADS -c $CONNS -m <1 for h1, $H2_STREAMS for h2>, $ROUNDS interleaved rounds × ${DURATION}s, medians of the rounds"
	echo "  CPU = utime+stime of all the server's processes (meshd: edge+gateway+sidecar) per request; app and load generator excluded"
	echo "  $MACHINE"
	echo "  $(versions_line nginx caddy h2load)"
	echo
	printf '%-6s %-7s %12s %10s %12s %6s\n' proto server "req/s" "p99 ms" "CPU µs/req" cores
	for proto in h1 h2; do
		for s in "${SERVERS[@]}"; do
			printf '%-6s %-7s %12.0f %10.2f %12.1f %6.2f\n' "$proto" "$s" \
				"$(median "$proto/$s" 2)" "$(median "$proto/$s" 3)" "$(median "$proto/$s" 4)" "$(median "$proto/$s" 6)"
		done
	done
	echo
	printf '%-6s %-14s %12s %10s %12s\n' proto ratio "req/s" "p99" "CPU/req"
	for proto in h1 h2; do
		for x in nginx caddy; do
			printf '%-6s %-14s %11sx %9sx %11sx\n' "$proto" "meshd/$x" \
				"$(ratio "$(median "$proto/meshd" 2)" "$(median "$proto/$x" 2)")" \
				"$(ratio "$(median "$proto/meshd" 3)" "$(median "$proto/$x" 3)")" \
				"$(ratio "$(median "$proto/meshd" 4)" "$(median "$proto/$x" 4)")"
		done
	done
	echo
	echo "meshd CPU µs/req by process (median of rounds):"
	for proto in h1 h2; do
		awk -v p="$proto" -v hz="$CLK_TCK" '
			$1 == p { n++; e[n] = ($5 - $2) * 1e6 / hz / $8; g[n] = ($6 - $3) * 1e6 / hz / $8; s[n] = ($7 - $4) * 1e6 / hz / $8 }
			function med(a,   i, j, t) {
				for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
				return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
			}
			END { if (n) printf "  %s: edge %.1f, gateway %.1f, sidecar %.1f\n", p, med(e), med(g), med(s) }' "$WORK/samples-meshd"
	done
	echo
	echo "rounds (key req/s p99_ms cpu_us requests cores):"
	sed 's/^/  /' "$WORK/samples"
} | tee "$RESULT"
echo
echo "written to $RESULT"
