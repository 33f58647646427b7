#!/usr/bin/env bash
# l4.sh: TCP throughput through meshd beside a direct connection and
# HAProxy, in one interleaved run on 127.0.0.1, measured by iperf3:
#
#   direct         iperf3 client → iperf3 server
#   haproxy-2      client → HAProxy → HAProxy → server (mode tcp, plain)
#   haproxy-2-tls  the same with TLS between the two HAProxy hops
#   meshd-pair     client → sidecar (--tcp-out) → mTLS → sidecar (--tcp) → server
#   meshd-full     client → edge (--public-tcp) → gateway → sidecar → server
#
# Prints the median throughput of each (Gbit/s, client → server and back
# with -R) with its ratio to haproxy-2-tls, the fair peer of meshd's mTLS
# hop, and checks meshd's target: the sidecar pair at least half of
# HAProxy's two hops. See bench/README.md.
#
#   sudo bench/l4.sh              # about 2 min
#   sudo QUICK=1 bench/l4.sh      # smoke run: 2 s per step, one round
# and UDP (iperf3 -u at UDP_RATE, default 50 Mbit/s, 1,400-byte datagrams)
# through the same paths but HAProxy's (which carries no UDP): loss and
# throughput; meshd's target is no loss at 50 Mbit/s.
#
#   knobs: ROUNDS DURATION STREAMS UDP_RATE SKIP_TCP MESHD MESHD_LOG_LEVEL MESHD_ARGS KEEP QUICK
#   (MESHD_ARGS=--no-mesh-http3: UDP between hops as capsules on HTTP/2
#   instead of HTTP/3 datagrams)
set -euo pipefail

QUICK="${QUICK:-0}"
SECONDS_PER="${DURATION:-5}"
[[ $QUICK == 1 ]] && SECONDS_PER=2 && ROUNDS="${ROUNDS:-1}"
STREAMS="${STREAMS:-1}" # iperf3 -P
UDP_RATE="${UDP_RATE:-50M}" # iperf3 -u -b
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

setup
need iperf3:iperf3 haproxy:haproxy jq:jq openssl:openssl
build

ports 16
P=("${PORTS[@]}")
SRV_PORT=${P[0]}
start iperf3-server iperf3 -s -p "$SRV_PORT" -B 127.0.0.1
IPERF_PID=$PID

# HAProxy: two hops, once plain and once with TLS between them.
self_signed haproxy
mkdir -p "$WORK/haproxy"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1m
  timeout server 1m
frontend a
  bind 127.0.0.1:${P[1]}
  default_backend to_b
backend to_b
  server b 127.0.0.1:${P[2]}
frontend b
  bind 127.0.0.1:${P[2]}
  default_backend to_srv
backend to_srv
  server s 127.0.0.1:$SRV_PORT
frontend a_tls
  bind 127.0.0.1:${P[3]}
  default_backend to_b_tls
backend to_b_tls
  server b 127.0.0.1:${P[4]} ssl verify none
frontend b_tls
  bind 127.0.0.1:${P[4]} ssl crt $WORK/tls/haproxy.pem
  default_backend to_srv
EOF
haproxy -c -f "$WORK/haproxy/haproxy.cfg" >"$WORK/logs/haproxy-c.log" 2>&1 || die "haproxy config: $(cat "$WORK/logs/haproxy-c.log")"
start haproxy haproxy -f "$WORK/haproxy/haproxy.cfg" -db
HAPROXY_PID=$PID

# meshd: a sidecar pair (the server's sidecar first, the client's joins
# it), and the full path from an edge's public TCP port.
m="$WORK/bin/meshd"
"$m" ca init --trust-domain bench.meshd --dir "$WORK/ca" >"$WORK/logs/ca.log" 2>&1 || die "meshd ca init: $(cat "$WORK/logs/ca.log")"
common=(--region eu --ca-dir "$WORK/ca" --log-level "${MESHD_LOG_LEVEL:-warn}" --drain-delay 100ms --log-format json ${MESHD_ARGS:-})
start meshd-gw "$m" run --role gateway --name gw "${common[@]}" --listen "127.0.0.1:${P[5]}" \
	--gossip-addr "127.0.0.1:${P[6]}" --wan-gossip-addr "127.0.0.1:${P[7]}" --admin "127.0.0.1:${P[8]}"
GW_PID=$PID
wait_ok "gateway /readyz" "$GW_PID" meshd-gw "http://127.0.0.1:${P[8]}/readyz"
start meshd-srv "$m" run --role sidecar --name iperf-1 --service iperf "${common[@]}" --tcp "iperf=127.0.0.1:$SRV_PORT" \
	--udp "iperf=127.0.0.1:$SRV_PORT" \
	--listen "127.0.0.1:${P[9]}" --gossip-addr "127.0.0.1:${P[10]}" --outbound "127.0.0.1:0" \
	--join "127.0.0.1:${P[6]}" --admin "127.0.0.1:${P[11]}"
SRV_SC_PID=$PID
wait_ok "server sidecar /readyz" "$SRV_SC_PID" meshd-srv "http://127.0.0.1:${P[11]}/readyz"
start meshd-cli "$m" run --role sidecar --name client-1 --service client "${common[@]}" --upstream "127.0.0.1:$SRV_PORT" \
	--tcp-out "iperf=127.0.0.1:${P[12]}" --udp-out "iperf=127.0.0.1:${P[12]}" --listen "127.0.0.1:0" --gossip-addr "127.0.0.1:0" --outbound "127.0.0.1:0" \
	--join "127.0.0.1:${P[6]}" --admin "127.0.0.1:${P[13]}"
CLI_SC_PID=$PID
wait_ok "client sidecar /readyz" "$CLI_SC_PID" meshd-cli "http://127.0.0.1:${P[13]}/readyz"
start meshd-edge "$m" run --role edge --name edge "${common[@]}" --public-http "127.0.0.1:0" \
	--public-tcp "127.0.0.1:${P[14]}=iperf" --public-udp "127.0.0.1:${P[14]}=iperf" --wan-gossip-addr "127.0.0.1:0" --wan-join "127.0.0.1:${P[7]}" \
	--admin "127.0.0.1:${P[15]}"
EDGE_PID=$PID
wait_ok "edge /readyz" "$EDGE_PID" meshd-edge "http://127.0.0.1:${P[15]}/readyz"

declare -A TARGET=(
	[direct]=$SRV_PORT [haproxy-2]=${P[1]} [haproxy-2-tls]=${P[3]}
	[meshd-pair]=${P[12]} [meshd-full]=${P[14]}
)
ORDER=(direct haproxy-2 haproxy-2-tls meshd-pair meshd-full)

# iperf KEY [-R] runs one iperf3 client against KEY's port and records
# Gbit/s received.
iperf() {
	local key=$1 dir=${2:-} out gbps n
	for ((n = 0; n < 50; n++)); do
		# The catalog may still be settling: the first connection of a
		# tunnel that finds no route is closed at once.
		if out="$(iperf3 -c 127.0.0.1 -p "${TARGET[$key]}" -t "$SECONDS_PER" -P "$STREAMS" $dir -J 2>&1)"; then
			break
		fi
		sleep 0.2
	done
	gbps="$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out" 2>/dev/null || true)"
	[[ -n "$gbps" && "$gbps" != null ]] || die "iperf3 through $key failed: $(tail -n 5 <<<"$out")"
	local k="$key${dir:+-R}"
	echo "$k $gbps" >>"$WORK/samples"
	log "$(printf '%-18s %6.2f Gbit/s' "$k" "$gbps")"
}

# iperf_udp KEY runs iperf3 -u at UDP_RATE and records loss (%) and Mbit/s.
iperf_udp() {
	local key=$1 out loss mbps n
	for ((n = 0; n < 50; n++)); do
		if out="$(iperf3 -c 127.0.0.1 -p "${TARGET[$key]}" -u -b "$UDP_RATE" -l 1400 -t "$SECONDS_PER" -J 2>&1)" &&
			[[ "$(jq -r '.end.sum.packets // 0' <<<"$out" 2>/dev/null)" != 0 ]]; then
			break
		fi
		sleep 0.2
	done
	loss="$(jq -r '.end.sum.lost_percent' <<<"$out" 2>/dev/null || true)"
	mbps="$(jq -r '.end.sum.bits_per_second / 1e6' <<<"$out" 2>/dev/null || true)"
	[[ -n "$loss" && "$loss" != null ]] || die "iperf3 -u through $key failed: $(tail -n 5 <<<"$out")"
	echo "udp-$key $loss $mbps" >>"$WORK/samples"
	log "$(printf '%-18s UDP %6.1f Mbit/s, %5.2f%% lost' "$key" "$mbps" "$loss")"
}
UDP_ORDER=(direct meshd-pair meshd-full)

: >"$WORK/samples"
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r of $ROUNDS"
	if [[ "${SKIP_TCP:-0}" != 1 ]]; then
		for key in "${ORDER[@]}"; do
			iperf "$key"
			iperf "$key" -R
		done
	fi
	for key in "${UDP_ORDER[@]}"; do
		iperf_udp "$key"
	done
	for pid in "$IPERF_PID" "$HAPROXY_PID" "$GW_PID" "$SRV_SC_PID" "$CLI_SC_PID" "$EDGE_PID"; do
		kill -0 "$pid" 2>/dev/null || die "a server exited during round $r (see $WORK/logs)"
	done
done

# Where datagrams were dropped inside meshd (the sockets of --udp-out and
# --public-udp, and the relays beside the server); a loss iperf3 sees
# beyond these happened in a kernel socket buffer.
echo
echo "meshd's own UDP drops (meshd_udp_dropped_total, nonzero only):"
for admin in "${P[13]}" "${P[15]}" "${P[11]}"; do
	curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" | awk '/^meshd_udp_dropped_total/ && $NF != 0 { print "  " $0; n++ } END { if (!n) print "  none" }'
done
echo "how the hops carried them (HTTP/3 datagrams, fallbacks to HTTP/2; nonzero only):"
for admin in "${P[13]}" "${P[15]}" "${P[8]}" "${P[11]}"; do
	curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" | awk '/^meshd_mesh_h3_(datagrams|tunnels|dropped)_total/ && $NF != 0 { print "  " $0; n++ } END { if (!n) print "  none" }'
done

med() {
	awk -v k="$1" '$1 == k { print $2 }' "$WORK/samples" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
machine_line
if [[ "${SKIP_TCP:-0}" != 1 ]]; then
echo "TCP throughput through one path, iperf3 -t $SECONDS_PER -P $STREAMS, median of $ROUNDS rounds (Gbit/s)"
versions_line haproxy
echo "$(iperf3 --version | head -n 1)"
printf '%-16s %12s %8s %12s %8s\n' path "client→srv" ratio "srv→client" ratio
ref="$(med haproxy-2-tls)"
refR="$(med haproxy-2-tls-R)"
for key in "${ORDER[@]}"; do
	a="$(med "$key")"
	b="$(med "$key-R")"
	printf '%-16s %12.2f %8s %12.2f %8s\n' "$key" "$a" "$(ratio "$a" "$ref")" "$b" "$(ratio "$b" "$refR")"
done
echo "(ratios to haproxy-2-tls: two HAProxy hops with TLS between them, as meshd's hop has mTLS)"
fi

echo
echo "UDP, iperf3 -u -b $UDP_RATE -l 1400 -t $SECONDS_PER, median of $ROUNDS rounds"
printf '%-16s %10s %10s\n' path "lost %" "Mbit/s"
for key in "${UDP_ORDER[@]}"; do
	printf '%-16s %10.2f %10.1f\n' "$key" "$(med "udp-$key")" "$(awk -v k="udp-$key" '$1 == k { print $3 }' "$WORK/samples" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
done

pair="$(med meshd-pair)"
hap="$(med haproxy-2)"
echo
if [[ "${SKIP_TCP:-0}" == 1 ]]; then
	echo "TCP not measured (SKIP_TCP=1)"
elif awk -v a="$pair" -v b="$ref" 'BEGIN { exit !(a >= 0.5 * b) }'; then
	echo "target met: meshd sidecar pair $(ratio "$pair" "$ref")× HAProxy two hops with TLS (target ≥ 0.5×); $(ratio "$pair" "$hap")× plain HAProxy"
else
	echo "target NOT met: meshd sidecar pair $(ratio "$pair" "$ref")× HAProxy two hops with TLS (target ≥ 0.5×); $(ratio "$pair" "$hap")× plain HAProxy"
fi

udp_worst="$(awk '$1 ~ /^udp-meshd/ { if ($2 > m) m = $2 } END { print m + 0 }' "$WORK/samples")"
if awk -v l="$udp_worst" 'BEGIN { exit !(l == 0) }'; then
	echo "target met: no UDP datagram lost through meshd at $UDP_RATE (every round, both paths)"
else
	echo "target NOT met: up to ${udp_worst}% of UDP datagrams lost through meshd at $UDP_RATE"
fi
