# shellcheck shell=bash
# Shared helpers of the scripts in bench/ (edge-tls.sh, cache-hits.sh,
# load.sh, cache-conformance.sh). Sourced, never run. Everything here works on a plain Debian 12 machine as root.

export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"
export LC_ALL=C

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

# Knobs shared by both scripts (each script may set its own defaults first).
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
H2_STREAMS="${H2_STREAMS:-1}"
WARMUP="${WARMUP:-2}"
CLK_TCK="$(getconf CLK_TCK)"

PIDS=()      # every process we started, in start order
WORK=""      # temp dir with configs, logs and load-generator output

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() {
	printf '\nFAILED: %s\n' "$*" >&2
	exit 1
}

# cleanup stops every process this script started, by PID, newest first,
# and removes the temp dir unless the run failed or KEEP=1.
cleanup() {
	local rc=$? i pid n
	set +e
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[i]}" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for ((n = 0; n < 100; n++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
	done
	if [[ -n "$WORK" && -d "$WORK" ]]; then
		if [[ $rc -ne 0 || "${KEEP:-0}" == 1 ]]; then
			echo "configs and logs kept in $WORK" >&2
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}

setup() {
	[[ $EUID -eq 0 ]] || die "run as root (it installs Debian packages)"
	WORK="$(mktemp -d /tmp/meshd-bench.XXXXXX)"
	mkdir -p "$WORK/logs" "$WORK/out" "$WORK/tls"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}

# need CMD:PACKAGE... installs the Debian packages whose command is missing,
# running apt-get update once. Services are not started by the install:
# a temporary policy-rc.d refuses it where none exists.
need() {
	local pair missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
	done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
	log "installing ${missing[*]}"
	local made_policy=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		made_policy=1
	fi
	local ok=1
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK/logs/apt.log" 2>&1 || ok=0
	if ((ok)); then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$WORK/logs/apt.log" 2>&1 || ok=0
	fi
	((made_policy)) && rm -f /usr/sbin/policy-rc.d
	((ok)) || die "apt-get install ${missing[*]} failed: see $WORK/logs/apt.log"
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} still missing after installing ${pair#*:}"
	done
}

# build puts meshd and the origin into $WORK/bin. MESHD=/path/to/meshd
# uses an existing binary instead of building one. Either way the binary
# run is a copy, as an installed one is: Go's linker writes its output
# through a memory map, which leaves the file in the page cache in 2 MiB
# folios that the kernel maps whole into every process running it (about
# 8 MiB more resident memory per meshd here than the same binary copied
# or read back from disk). It is built static (CGO_ENABLED=0), as the
# README builds it: no libc mapped into each node.
build() {
	mkdir -p "$WORK/bin"
	command -v go >/dev/null || die "go is not on PATH (meshd needs Go 1.26; Debian's golang-go is too old)"
	if [[ -n "${MESHD:-}" ]]; then
		cp "$MESHD" "$WORK/bin/meshd"
	else
		log "building meshd"
		(cd "$REPO_DIR" && CGO_ENABLED=0 go build -o "$WORK/bin/meshd.built" .) || die "go build of meshd failed"
		cp "$WORK/bin/meshd.built" "$WORK/bin/meshd"
		rm -f "$WORK/bin/meshd.built"
	fi
	(cd "$REPO_DIR" && go build -o "$WORK/bin/origin" ./bench/origin) || die "go build of bench/origin failed"
}

# ports N fills the array PORTS with N loopback ports free for TCP and UDP
# that no earlier call returned: a port handed out but not yet bound looks
# free to the next call, and two servers on one port fail in odd ways
# (gossip datagrams landing on the edge's HTTP/3 socket).
USED_PORTS=" "
ports() {
	local want=$1 cand p
	mapfile -t cand < <("$WORK/bin/origin" -free-ports $((want + $(wc -w <<<"$USED_PORTS"))))
	PORTS=()
	for p in "${cand[@]}"; do
		((${#PORTS[@]} < want)) || break
		[[ "$USED_PORTS" == *" $p "* ]] && continue
		PORTS+=("$p")
		USED_PORTS+="$p "
	done
	((${#PORTS[@]} == want)) || die "could not find $want free ports"
}

# start NAME CMD... runs CMD in the background with its output in
# $WORK/logs/NAME.log and sets PID to its process id.
start() {
	local name=$1
	shift
	# SERVER_CPUS (a taskset list, e.g. "1"): the cores servers run on.
	if [[ -n "${SERVER_CPUS:-}" ]]; then
		set -- taskset -c "$SERVER_CPUS" "$@"
	fi
	"$@" >"$WORK/logs/$name.log" 2>&1 &
	PID=$!
	PIDS+=("$PID")
}

# alive PID NAME fails loudly when a server has exited.
alive() {
	kill -0 "$1" 2>/dev/null || die "$2 exited; last lines of $WORK/logs/$2.log:
$(tail -n 20 "$WORK/logs/$2.log" 2>/dev/null)"
}

# wait_ok WHAT PID NAME CURL-ARGS... polls until curl gets a 200, for at
# most 60 s, failing early when the server process is gone.
wait_ok() {
	local what=$1 pid=$2 name=$3 code n
	shift 3
	for ((n = 0; n < 300; n++)); do
		alive "$pid" "$name"
		code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" || true)"
		[[ "$code" == 200 ]] && return 0
		sleep 0.2
	done
	die "$what never answered 200 (last status $code): curl $*"
}

# tree PID prints PID and all its descendants.
tree() {
	local pid kids k
	for pid in "$@"; do
		echo "$pid"
		kids="$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
		for k in $kids; do tree "$k"; done
	done
}

# ticks PID... prints the summed utime+stime (in clock ticks) of the given
# processes and all their descendants, read from /proc/PID/stat. Fields
# are counted after the ')' that ends the command name, which may itself
# hold spaces.
ticks() {
	local pid stat sum=0 rest
	for pid in $(tree "$@"); do
		stat="$(cat /proc/"$pid"/stat 2>/dev/null)" || continue
		rest="${stat##*) }"
		# rest starts at field 3 (state); utime and stime are fields 14 and 15.
		read -r -a f <<<"$rest"
		sum=$((sum + f[11] + f[12]))
	done
	echo "$sum"
}

# hdr_check WHAT HEADER-REGEX CURL-ARGS... fetches twice and fails loudly
# unless the second response is a 200 whose headers match the regex (case
# insensitive): the proof that a server really answers from its cache.
hdr_check() {
	local what=$1 re=$2 hdrs
	shift 2
	curl -s -o /dev/null --max-time 5 "$@" || true
	hdrs="$(curl -s -D - -o /dev/null --max-time 5 "$@" | tr -d '\r')" || die "$what: curl $* failed"
	head -n 1 <<<"$hdrs" | grep -qE '^HTTP/[0-9.]+ 200' || die "$what: not a 200:
$hdrs"
	grep -qiE "$re" <<<"$hdrs" || die "$what: no cache hit (want header /$re/), got:
$hdrs"
	log "hit confirmed: $what: $(grep -iE "$re" <<<"$hdrs" | head -n 1)"
}

# origin_count prints how many bodies the origin has served.
origin_count() { curl -s --max-time 5 "http://127.0.0.1:$ORIGIN_PORT/_count"; }

# LOAD GENERATORS. Each prints "REQUESTS RPS P99_MS" on stdout and fails
# loudly on any error or non-2xx answer, so that a broken server can never
# look fast.

# parse_wrk OUT prints "REQUESTS RPS P99_MS" from wrk --latency output, or
# fails when wrk saw socket errors or non-2xx answers or the output is not
# what wrk 4 prints.
parse_wrk() {
	awk '
		function ms(v) {
			if (v ~ /^[0-9.]+us$/) return v / 1000
			if (v ~ /^[0-9.]+ms$/) return v + 0
			if (v ~ /^[0-9.]+s$/) return v * 1000
			if (v ~ /^[0-9.]+m$/) return v * 60000
			return -1
		}
		/Non-2xx or 3xx responses|Socket errors/ { bad = 1 }
		/ requests in / { n = $1 }
		/^ +99%/ { p99 = ms($2) }
		/^Requests\/sec:/ { rps = $2 }
		END {
			if (bad || n == "" || n + 0 <= 0 || rps == "" || p99 == "" || p99 < 0) exit 1
			printf "%d %.1f %.3f\n", n, rps, p99
		}' "$1"
}

# parse_h2 OUT TIMES prints "REQUESTS RPS P99_MS" from h2load's summary
# and its per-request log (--log-file: start time, status, latency in µs,
# tab-separated), or fails when any request failed, errored or was not
# answered 2xx.
parse_h2() {
	local res p99
	res="$(awk '
		/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /^req\/s/) rps = $(i-1) }
		/^requests:/ { ok = $8; failed = $10; errored = $12; timeout = $14 }
		/^status codes:/ { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
		END {
			if (ok == "" || ok + 0 <= 0 || rps == "" || s2 == "") exit 1
			if (failed + errored + timeout + s3 + s4 + s5 > 0) exit 1
			printf "%d %s", ok, rps
		}' "$1")" || return 1
	p99="$(awk -F '\t' '$2 !~ /^2[0-9][0-9]$/ { exit 1 } { print $3 }' "$2" | sort -n |
		awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) exit 1; printf "%.3f", v[i] / 1000 }')" ||
		return 1
	echo "$res $p99"
}

# load_wrk OUT SECONDS URL HOST [WRK ARGS...]: wrk over plain HTTP/1.1.
load_wrk() {
	local out=$1 secs=$2 url=$3 host=$4
	shift 4
	wrk -t "$THREADS" -c "$CONNS" -d "${secs}s" --latency -H "Host: $host" "$@" "$url" >"$out" 2>&1 ||
		die "wrk failed: $(cat "$out")"
	parse_wrk "$out" || die "wrk saw errors against $url (or its output is unreadable):
$(cat "$out")"
}

# load_h2 OUT SECONDS URL ADDR [--h1]: h2load over TLS to ADDR
# (host:port) with the URL's host as SNI and :authority. p99 comes from
# h2load's per-request log, since h2load prints no percentiles itself.
load_h2() {
	local out=$1 secs=$2 url=$3 addr=$4
	shift 4
	local streams=$H2_STREAMS
	[[ "${1:-}" == --h1 ]] && streams=1
	h2load -t "$THREADS" -c "$CONNS" -m "$streams" -D "$secs" --connect-to="$addr" \
		--log-file="$out.times" "$@" "$url" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
	parse_h2 "$out" "$out.times" || die "h2load saw errors against $url via $addr (or its output is unreadable):
$(cat "$out")"
	rm -f "$out.times"
}

# measure KEY PIDS LOADFN ARGS...: runs one load, reads the CPU of the
# server's processes around it, and appends "KEY RPS P99_MS CPU_US/REQ
# REQUESTS CORES" to $WORK/samples.
measure() {
	local key=$1 pids res t0 t1 n rps p99 cpu cores
	read -r -a pids <<<"$2"
	shift 2
	t0="$(ticks "${pids[@]}")"
	res="$("$@")" || exit 1
	t1="$(ticks "${pids[@]}")"
	read -r n rps p99 <<<"$res"
	((n > 0)) || die "$key: no requests completed"
	cpu="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
	# cores: how much of the machine the server used; below what it could
	# get, throughput is limited by something other than CPU per request.
	cores="$(awk -v c="$cpu" -v r="$rps" 'BEGIN { printf "%.2f", c * r / 1e6 }')"
	echo "$key $rps $p99 $cpu $n $cores" >>"$WORK/samples"
	log "$(printf '%-22s %10.0f req/s  p99 %7.2f ms  %6.1f µs CPU/req' "$key" "$rps" "$p99" "$cpu")"
}

# median KEY COLUMN prints the median of one column (2 rps, 3 p99, 4 cpu, 6 cores)
# over the rounds of KEY.
median() {
	awk -v k="$1" -v c="$2" '$1 == k { print $c }' "$WORK/samples" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B prints A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

# machine_line describes where the numbers come from.
machine_line() {
	local cpu
	cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "host $(hostname), $(nproc) cores ($cpu), load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

versions_line() {
	local v=()
	v+=("meshd $("$WORK/bin/meshd" version 2>/dev/null | head -n 1 || echo '?')")
	local c
	for c in "$@"; do
		case $c in
		nginx) v+=("$(nginx -v 2>&1 | sed 's/^nginx version: //')") ;;
		caddy) v+=("caddy $(caddy version 2>/dev/null | cut -d' ' -f1)") ;;
		varnish) v+=("$(varnishd -V 2>&1 | head -n 1 | sed 's/^varnishd (\([^ ]*\) .*/\1/')") ;;
		hitch) v+=("$(hitch --version 2>&1 | head -n 1)") ;;
		wrk) v+=("wrk $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2)") ;;
		h2load) v+=("$(h2load --version 2>&1 | head -n 1)") ;;
		haproxy) v+=("$(haproxy -v 2>&1 | head -n 1 | cut -d' ' -f1-3)") ;;
		vegeta) v+=("vegeta $VEGETA_VERSION") ;;
		esac
	done
	local out
	out="$(printf '%s, ' "${v[@]}")"
	echo "versions: ${out%, }"
}

# self_signed NAME writes $WORK/tls/NAME.{crt,key,pem}: an ECDSA P-256
# certificate for web.localhost, the key type meshd's and Caddy's internal
# CAs issue, so every server does the same handshake work.
# start_nginx checks and starts $WORK/nginx/nginx.conf; sets NGINX_PID.
start_nginx() {
	nginx -t -c "$WORK/nginx/nginx.conf" >"$WORK/logs/nginx-t.log" 2>&1 || die "nginx config: $(cat "$WORK/logs/nginx-t.log")"
	start nginx nginx -c "$WORK/nginx/nginx.conf"
	# shellcheck disable=SC2034 # read by the scripts that source this file
	NGINX_PID=$PID
}

# nginx_conf_head prints the start of an nginx.conf both benchmarks share:
# foreground, files under $WORK, no access log, keep-alive without limit.
# The caller prints the rest of the http block and closes it.
nginx_conf_head() {
	cat <<EOF
user root root;
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $WORK/nginx/body;
	proxy_temp_path $WORK/nginx/proxy;
	fastcgi_temp_path $WORK/nginx/fastcgi;
	uwsgi_temp_path $WORK/nginx/uwsgi;
	scgi_temp_path $WORK/nginx/scgi;
	keepalive_requests 1000000;
EOF
}

self_signed() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj "/CN=web.localhost" -addext "subjectAltName=DNS:web.localhost" \
		-keyout "$WORK/tls/$1.key" -out "$WORK/tls/$1.crt" >"$WORK/logs/openssl.log" 2>&1 ||
		die "openssl could not make a certificate: $(cat "$WORK/logs/openssl.log")"
	cat "$WORK/tls/$1.key" "$WORK/tls/$1.crt" >"$WORK/tls/$1.pem"
}

# start_origin starts the shared app on ORIGIN_PORT.
start_origin() {
	start origin "$WORK/bin/origin" -listen "127.0.0.1:$ORIGIN_PORT"
	ORIGIN_PID=$PID
	wait_ok origin "$ORIGIN_PID" origin "http://127.0.0.1:$ORIGIN_PORT/healthz"
}

# start_mesh CACHE_SIZE HTTP_PORT HTTPS_PORT starts a gateway, a sidecar
# for service web in front of the origin and an edge, all of region eu on
# loopback, and waits until a request through the edge is answered.
# EDGE_ARGS (an array, optional) adds flags to the edge's command line;
# MESHD_ARGS (a string, split on spaces) adds flags to every node's.
# Sets EDGE_PID, GW_PID, SC_PID, and MESH_JOIN (the gateway's region
# gossip address, for more nodes of region eu) and MESH_COMMON (the flags
# every node of this mesh shares).
start_mesh() {
	local cache_size=$1 http_port=$2 https_port=$3
	local m="$WORK/bin/meshd"
	ports 11
	local p=("${PORTS[@]}")
	"$m" ca init --trust-domain bench.meshd --dir "$WORK/ca" >"$WORK/logs/ca.log" 2>&1 ||
		die "meshd ca init failed: $(cat "$WORK/logs/ca.log")"
	local common=(--region eu --ca-dir "$WORK/ca" --log-level "${MESHD_LOG_LEVEL:-warn}" --drain-delay 100ms)
	if [[ -n "${MESHD_ARGS:-}" ]]; then
		# shellcheck disable=SC2206 # split on purpose: several flags
		common+=(${MESHD_ARGS})
	fi
	# shellcheck disable=SC2034 # read by the scripts that source this file
	MESH_COMMON=("${common[@]}")
	# shellcheck disable=SC2034
	MESH_JOIN="127.0.0.1:${p[1]}"
	start meshd-gw "$m" run --role gateway --name gw "${common[@]}" \
		--listen "127.0.0.1:${p[0]}" --gossip-addr "127.0.0.1:${p[1]}" \
		--wan-gossip-addr "127.0.0.1:${p[2]}" --admin "127.0.0.1:${p[3]}"
	GW_PID=$PID
	wait_ok "gateway /readyz" "$GW_PID" meshd-gw "http://127.0.0.1:${p[3]}/readyz"
	start meshd-sidecar "$m" run --role sidecar --name web-1 --service web "${common[@]}" \
		--upstream "127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:${p[4]}" \
		--outbound "127.0.0.1:${p[5]}" --gossip-addr "127.0.0.1:${p[6]}" \
		--join "127.0.0.1:${p[1]}" --admin "127.0.0.1:${p[7]}"
	SC_PID=$PID
	wait_ok "sidecar /readyz" "$SC_PID" meshd-sidecar "http://127.0.0.1:${p[7]}/readyz"
	start meshd-edge "$m" run --role edge --name edge "${common[@]}" \
		--public-http "127.0.0.1:$http_port" --public-https "127.0.0.1:$https_port" \
		--tls internal --data-dir "$WORK/edge-data" --public-http-allow web.localhost \
		--cache-size "$cache_size" --wan-gossip-addr "127.0.0.1:${p[8]}" \
		--wan-join "127.0.0.1:${p[2]}" --admin "127.0.0.1:${p[9]}" ${EDGE_ARGS[@]+"${EDGE_ARGS[@]}"}
	EDGE_PID=$PID
	EDGE_ADMIN="127.0.0.1:${p[9]}"
	wait_ok "edge /readyz" "$EDGE_PID" meshd-edge "http://$EDGE_ADMIN/readyz"
	wait_ok "a request through meshd's edge" "$EDGE_PID" meshd-edge \
		-H "Host: web.localhost" "http://127.0.0.1:$http_port/healthz"
}

# stop PID stops one process this script started, by its PID (TERM, then
# KILL after 10 s), and forgets it so the exit trap does not signal a PID
# the system may have reused since.
stop() {
	local pid=$1 n i keep=()
	kill -TERM "$pid" 2>/dev/null || true
	for ((n = 0; n < 100; n++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for i in "${PIDS[@]}"; do
		[[ $i == "$pid" ]] || keep+=("$i")
	done
	PIDS=(${keep[@]+"${keep[@]}"})
}

# rss_mib PID prints the resident set (VmRSS of /proc/PID/status) in MiB
# with one decimal, or "-" when the process is gone. HWM=1 reads VmHWM,
# the peak resident set since the process started, instead.
rss_mib() {
	local field=VmRSS
	[[ "${HWM:-0}" == 1 ]] && field=VmHWM
	awk -v f="$field:" '$1 == f { printf "%.1f\n", $2 / 1024; found = 1 } END { if (!found) print "-" }' \
		"/proc/$1/status" 2>/dev/null || echo "-"
}

VEGETA_VERSION=v12.13.0

# need_vegeta sets VEGETA to a vegeta binary: on PATH, in Go's bin
# directory, or installed there with go install (from the Go module proxy).
need_vegeta() {
	VEGETA="$(command -v vegeta 2>/dev/null || true)"
	local gobin
	gobin="$(go env GOBIN 2>/dev/null || true)"
	[[ -n "$gobin" ]] || gobin="$(go env GOPATH 2>/dev/null || true)/bin"
	[[ -n "$VEGETA" || ! -x "$gobin/vegeta" ]] || VEGETA="$gobin/vegeta"
	if [[ -z "$VEGETA" ]]; then
		command -v go >/dev/null || die "vegeta is missing and there is no go to install it"
		log "installing vegeta $VEGETA_VERSION (go install)"
		go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION" >"$WORK/logs/vegeta-install.log" 2>&1 ||
			die "go install github.com/tsenart/vegeta/v12@$VEGETA_VERSION failed (it needs the Go module proxy; or put vegeta on PATH): $(tail -n 5 "$WORK/logs/vegeta-install.log")"
		VEGETA="$gobin/vegeta"
	fi
	"$VEGETA" -version >/dev/null 2>&1 || die "$VEGETA does not run"
}

# pcts reads latencies in ns, one a line, and prints the nearest-rank
# 50th, 90th and 99th percentiles and the maximum in ms, or "- - - -" when
# there are none.
pcts() {
	sort -n | awk '
		function rank(q,   i) { i = int(NR * q); if (i < NR * q) i++; if (i < 1) i = 1; return v[i] / 1e6 }
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "- - - -"; exit }
			printf "%.3f %.3f %.3f %.3f\n", rank(0.50), rank(0.90), rank(0.99), v[NR] / 1e6
		}'
}

# parse_vegeta CSV SECONDS reads the results of one vegeta attack of
# SECONDS (vegeta encode --to csv: timestamp ns, status, latency ns, ...)
# and prints one line:
#
#	REQUESTS OK REFUSED NOANSWER GOODPUT P50 P90 P99 MAX ANS_P99 REF_P99 CODES
#
# OK: 2xx answers; REFUSED: answers with any other status; NOANSWER: status
# 0 (timeouts, refused or reset connections); GOODPUT: 2xx answers that
# completed within SECONDS of the first request, per second; P50..MAX: ms
# over every request (one that got no answer counts with the time vegeta
# waited for it); ANS_P99: p99 of the answered requests only; REF_P99: p99
# of the refused ones ("-" when none); CODES: "status:count,..." by status.
# Fails when the file holds no result or a line is not vegeta's.
parse_vegeta() {
	local csv=$1 secs=$2 head all ans ref codes
	head="$(awk -F, -v d="$secs" '
		$1 !~ /^[0-9]+$/ || $2 !~ /^[0-9]+$/ || $3 !~ /^[0-9]+$/ { bad = 1; exit }
		{ ts[NR] = $1; end[NR] = $1 + $3; code[NR] = $2; if (NR == 1 || $1 < t0) t0 = $1 }
		END {
			if (bad || NR == 0) exit 1
			for (i = 1; i <= NR; i++) {
				if (code[i] >= 200 && code[i] < 300) { ok++; if (end[i] <= t0 + d * 1e9) good++ }
				else if (code[i] == 0) none++
				else refused++
			}
			printf "%d %d %d %d %.1f\n", NR, ok, refused, none, good / d
		}' "$csv")" || return 1
	all="$(cut -d, -f3 "$csv" | pcts)"
	ans="$(awk -F, '$2 != 0 { print $3 }' "$csv" | pcts)"
	ref="$(awk -F, '$2 != 0 && ($2 < 200 || $2 >= 300) { print $3 }' "$csv" | pcts)"
	codes="$(cut -d, -f2 "$csv" | sort -n | uniq -c | awk '{ printf "%s%s:%s", sep, $2, $1; sep = "," }')"
	echo "$head $all $(cut -d' ' -f3 <<<"$ans") $(cut -d' ' -f3 <<<"$ref") $codes"
}

# waited_ticks VAR sets VAR to the CPU (utime+stime in clock ticks:
# cutime and cstime of /proc/PID/stat) of the child processes this shell
# has waited for so far. It sets a variable rather than printing, since
# $(waited_ticks) would read the stat of the subshell it forks.
waited_ticks() {
	local me=$BASHPID stat rest w
	stat="$(cat "/proc/$me/stat")"
	rest="${stat##*) }"
	# rest starts at field 3 (state); cutime and cstime are fields 16 and 17.
	read -r -a w <<<"$rest"
	printf -v "$1" '%d' $((w[13] + w[14]))
}

# attack OUT SECONDS RATE URL [VEGETA ARGS...] runs one vegeta attack over
# HTTP/1.1 (TLS certificates not verified, bodies not kept, TIMEOUT per
# request, default 2s) into OUT.bin and OUT.csv and prints parse_vegeta's
# line followed by the CPU vegeta used (clock ticks). RATE is requests per
# second (open loop), or 0 with -max-workers N for N workers as fast as
# each is answered (closed loop). Run it in a subshell ($(attack ...)),
# so the CPU is vegeta's alone.
attack() {
	local out=$1 secs=$2 rate=$3 url=$4 t0 gen
	shift 4
	waited_ticks t0
	# GEN_CPUS (a taskset list, e.g. "0"): the cores vegeta runs on.
	local pin=()
	[[ -z "${GEN_CPUS:-}" ]] || pin=(taskset -c "$GEN_CPUS")
	echo "GET $url" | ${pin[@]+"${pin[@]}"} "$VEGETA" attack -rate="$rate/1s" -duration="${secs}s" -timeout="${TIMEOUT:-2s}" \
		-insecure -http2=false -max-body=0 -output="$out.bin" "$@" 2>"$out.err" ||
		die "vegeta attack of $url failed: $(tail -n 5 "$out.err")"
	waited_ticks gen
	gen=$((gen - t0))
	"$VEGETA" encode --to csv --output "$out.csv" "$out.bin" 2>>"$out.err" ||
		die "vegeta encode of $out.bin failed: $(tail -n 5 "$out.err")"
	echo "$(parse_vegeta "$out.csv" "$secs" || die "no vegeta results in $out.csv (attack of $url)") $gen"
}
