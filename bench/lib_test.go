package bench

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// lib runs script in bash after sourcing lib.sh, with WORK set to dir, and
// returns its standard output.
func lib(t *testing.T, dir, script string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail; source ./lib.sh; WORK="+strconv.Quote(dir)+"; "+script)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, errb.String())
	}
	return strings.TrimSpace(out.String()), err
}

// fields splits "N RPS P99" into numbers.
func fields(t *testing.T, s string) []float64 {
	t.Helper()
	var v []float64
	for _, f := range strings.Fields(s) {
		x, err := strconv.ParseFloat(f, 64)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		v = append(v, x)
	}
	if len(v) != 3 {
		t.Fatalf("%q: want 3 numbers", s)
	}
	return v
}

func TestScriptsParse(t *testing.T) {
	scripts, err := filepath.Glob("*.sh")
	if err != nil || len(scripts) < 3 {
		t.Fatalf("scripts: %v %v", scripts, err)
	}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Log("shellcheck not installed: lint skipped")
		return
	}
	out, err := exec.Command("shellcheck", append([]string{"-x"}, scripts...)...).CombinedOutput()
	if err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}

// rewrite copies testdata/name into dir/as with replacements applied.
func rewrite(t *testing.T, dir, name, as string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer(repl...).Replace(string(b))
	if s == string(b) && len(repl) > 0 {
		t.Fatalf("%s: replacement %q changed nothing", name, repl)
	}
	p := filepath.Join(dir, as)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkParsed checks what a parse_* function printed: a failure when want
// is nil, else the three numbers within tol.
func checkParsed(t *testing.T, out string, err error, want []float64, tol float64) {
	t.Helper()
	if want == nil {
		if err == nil {
			t.Fatalf("parsed %q, want failure", out)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	got := fields(t, out)
	for i := range got {
		if math.Abs(got[i]-want[i]) > tol {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestParseWrk(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string
		want []float64 // nil: must fail
	}{
		{"recorded run", "testdata/wrk-ok.txt", []float64{46431, 42195.65, 6.69}},
		{"p99 in µs", rewrite(t, dir, "wrk-ok.txt", "v1", "6.69ms", "812.00us"), []float64{46431, 42195.65, 0.812}},
		{"p99 in s", rewrite(t, dir, "wrk-ok.txt", "v2", "6.69ms", "1.20s"), []float64{46431, 42195.65, 1200}},
		{"unknown unit", rewrite(t, dir, "wrk-ok.txt", "v3", "6.69ms", "6.69xs"), nil},
		{"no latency distribution", rewrite(t, dir, "wrk-ok.txt", "v4", "99%", "98%"), nil},
		{"non-2xx answers", "testdata/wrk-404.txt", nil},
		{"connection refused", "testdata/wrk-refused.txt", nil},
		{"socket errors", rewrite(t, dir, "wrk-ok.txt", "v5", "Requests/sec:", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:"), nil},
		{"empty", "/dev/null", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := lib(t, dir, "parse_wrk "+strconv.Quote(tc.file))
			checkParsed(t, out, err, tc.want, 0.06)
		})
	}
}

// p99 computes the nearest-rank 99th percentile of a times file in ms,
// independently of the shell code under test.
func p99(t *testing.T, file string) float64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v []float64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "\t")
		x, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			t.Fatal(err)
		}
		v = append(v, x)
	}
	sort.Float64s(v)
	return v[int(math.Ceil(float64(len(v))*0.99))-1] / 1000
}

func TestParseH2(t *testing.T) {
	dir := t.TempDir()
	okTimes := "testdata/h2load-ok.times"
	tests := []struct {
		name        string
		file, times string
		want        []float64
	}{
		{"recorded run", "testdata/h2load-ok.txt", okTimes, []float64{36471, 36471, p99(t, okTimes)}},
		{"4xx answers", "testdata/h2load-404.txt", "testdata/h2load-404.times", nil},
		{"connection refused", "testdata/h2load-refused.txt", "testdata/h2load-refused.times", nil},
		{"a 5xx in the log", "testdata/h2load-ok.txt", rewrite(t, dir, "h2load-ok.times", "v6", "\t200\t302\n", "\t503\t302\n"), nil},
		{"errored requests", rewrite(t, dir, "h2load-ok.txt", "v7", "0 errored", "7 errored"), okTimes, nil},
		{"timeouts", rewrite(t, dir, "h2load-ok.txt", "v8", "0 timeout", "2 timeout"), okTimes, nil},
		{"empty log", "testdata/h2load-ok.txt", "/dev/null", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := lib(t, dir, "parse_h2 "+strconv.Quote(tc.file)+" "+strconv.Quote(tc.times))
			checkParsed(t, out, err, tc.want, 0.001)
		})
	}
}

func TestMedianRatio(t *testing.T) {
	dir := t.TempDir()
	samples := "a 30 1.5 20 100\nb 10 9 5 50\na 10 2.5 40 100\na 20 0.5 30 100\nb 30 7 15 50\n"
	if err := os.WriteFile(filepath.Join(dir, "samples"), []byte(samples), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ expr, want string }{
		{"median a 2", "20"},  // odd count
		{"median a 3", "1.5"}, // numeric, not lexical, order
		{"median a 4", "30"},  // rows sorted per column
		{"median b 2", "20"},  // even count: mean of the middle two
		{"median b 3", "8"},   //
		{"median c 2", "nan"}, // no rows
		{"ratio 3 2", "1.50"}, //
		{"ratio 1 3", "0.33"}, //
		{"ratio 5 0", "-"},    // no division by zero
		{"ratio 5 nan", "-"},  // a missing median is no number either
	}
	for _, tc := range tests {
		out, err := lib(t, dir, tc.expr)
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		if out != tc.want {
			t.Errorf("%s = %q, want %q", tc.expr, out, tc.want)
		}
	}
}

// TestTicks: the CPU reading sums a process and its children, grows when
// they burn CPU, and ignores processes that are gone.
func TestTicks(t *testing.T) {
	dir := t.TempDir()
	// The shell starts a CPU-burning child, reads the ticks of itself and
	// its descendants before and after, and prints both and the tree.
	out, err := lib(t, dir, `
		( end=$((SECONDS + 2)); while ((SECONDS < end)); do :; done ) &
		kid=$!
		a=$(ticks $$)
		wait "$kid" || true
		( end=$((SECONDS + 1)); while ((SECONDS < end)); do :; done; sleep 5 ) &
		kid=$!
		sleep 0.2
		echo "$a $(ticks $$) $(tree $$ | wc -l) $(ticks 999999999)"
		kill "$kid"`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("output %q", out)
	}
	a, _ := strconv.Atoi(f[0])
	b, _ := strconv.Atoi(f[1])
	procs, _ := strconv.Atoi(f[2])
	if b <= a {
		t.Errorf("ticks did not grow while a child burned CPU: %d then %d", a, b)
	}
	if procs < 2 {
		t.Errorf("tree found %d processes, want the shell and its child", procs)
	}
	if f[3] != "0" {
		t.Errorf("ticks of a missing process = %s, want 0", f[3])
	}
}

// TestMeasure: one sample line per load, with the CPU of the given
// processes divided by the load's request count, and a failing load
// failing the measurement.
func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	out, err := lib(t, dir, `
		# A server stand-in: spins for about a second, then idles, alive.
		( sleep 0.3; end=$((SECONDS + 2)); while ((SECONDS < end)); do :; done; sleep 20 ) &
		srv=$!
		load() { sleep 2.5; echo "1000 500.0 2.5"; }
		measure k1 "$srv" load 2>/dev/null
		kill "$srv"
		cat "$WORK/samples"`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 6 || f[0] != "k1" || f[1] != "500.0" || f[2] != "2.5" || f[4] != "1000" {
		t.Fatalf("sample %q", out)
	}
	cpu, _ := strconv.ParseFloat(f[3], 64)
	cores, _ := strconv.ParseFloat(f[5], 64)
	// The stand-in spins for 1–2 s while measured: up to 3 s of CPU over
	// 1000 requests, at least 0.1 s even on a machine busy with others.
	if cpu < 100 || cpu > 3000 {
		t.Errorf("CPU per request %.1f µs, want 100..3000", cpu)
	}
	if want := cpu * 500 / 1e6; math.Abs(cores-want) > 0.01 {
		t.Errorf("cores %.2f, want %.2f", cores, want)
	}
	if _, err := lib(t, dir, `fail() { return 1; }; measure k2 "$$" fail 2>/dev/null`); err == nil {
		t.Error("a failing load did not fail the measurement")
	}
	if _, err := lib(t, dir, `zero() { echo "0 0 0"; }; measure k3 "$$" zero 2>/dev/null`); err == nil {
		t.Error("a load with no requests did not fail the measurement")
	}
}

// vegetaStats computes what parse_vegeta prints from a vegeta CSV file,
// independently of the shell code under test: counts by class, goodput
// in a window of secs from the first request, nearest-rank percentiles.
func vegetaStats(t *testing.T, file string, secs float64) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var all, answered, refused []float64
	var ok, none, good int
	codes := map[int]int{}
	t0 := int64(math.MaxInt64)
	for _, row := range rows {
		ts, _ := strconv.ParseInt(row[0], 10, 64)
		t0 = min(t0, ts)
	}
	for _, row := range rows {
		ts, _ := strconv.ParseInt(row[0], 10, 64)
		code, _ := strconv.Atoi(row[1])
		lat, _ := strconv.ParseInt(row[2], 10, 64)
		codes[code]++
		ms := float64(lat) / 1e6
		all = append(all, ms)
		switch {
		case code >= 200 && code < 300:
			ok++
			if ts+lat <= t0+int64(secs*1e9) {
				good++
			}
			answered = append(answered, ms)
		case code == 0:
			none++
		default:
			refused = append(refused, ms)
			answered = append(answered, ms)
		}
	}
	rank := func(v []float64, q float64) string {
		if len(v) == 0 {
			return "-"
		}
		v = append([]float64(nil), v...)
		sort.Float64s(v)
		return fmt.Sprintf("%.3f", v[max(int(math.Ceil(float64(len(v))*q))-1, 0)])
	}
	var cs []string
	keys := make([]int, 0, len(codes))
	for c := range codes {
		keys = append(keys, c)
	}
	sort.Ints(keys)
	for _, c := range keys {
		cs = append(cs, fmt.Sprintf("%d:%d", c, codes[c]))
	}
	return fmt.Sprintf("%d %d %d %d %.1f %s %s %s %s %s %s %s", len(rows), ok, len(refused), none,
		float64(good)/secs, rank(all, 0.5), rank(all, 0.9), rank(all, 0.99), rank(all, 1),
		rank(answered, 0.99), rank(refused, 0.99), strings.Join(cs, ","))
}

func TestParseVegeta(t *testing.T) {
	dir := t.TempDir()
	// Synthetic results: t0 = 1 s; two 200s inside a 1 s window, one 200
	// that completes after it, a 503, a request without answer.
	synth := filepath.Join(dir, "synth.csv")
	lines := []string{
		"1000000000,200,2000000,0,0,,,,0,GET,http://a/,",
		"1100000000,200,4000000,0,0,,,,1,GET,http://a/,",
		"1990000000,200,30000000,0,0,,,,2,GET,http://a/,",
		"1200000000,503,500000,0,0,503 Service Unavailable,,,3,GET,http://a/,",
		`1300000000,0,2000000000,0,0,"Get ""http://a/"": context deadline exceeded",,,4,GET,http://a/,`,
	}
	if err := os.WriteFile(synth, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file string
		secs float64
		want string // "": must fail
	}{
		{"recorded run: 200, 404, connection refused", "testdata/vegeta-mixed.csv", 1, vegetaStats(t, "testdata/vegeta-mixed.csv", 1)},
		{"goodput window, refusals, no answer", synth, 1, "5 3 1 1 2.0 4.000 2000.000 2000.000 2000.000 30.000 0.500 0:1,200:3,503:1"},
		{"only 2xx: no refused p99", rewrite(t, dir, "vegeta-mixed.csv", "ok", ",0,", ",200,", ",404,", ",200,"), 1, ""},
		{"not vegeta's CSV", rewrite(t, dir, "vegeta-mixed.csv", "bad", ",200,", ",OK,"), 1, ""},
		{"empty", "/dev/null", 1, ""},
	}
	tests[2].want = vegetaStats(t, tests[2].file, 1)
	if !strings.Contains(tests[2].want, " - 200:40") {
		t.Fatalf("all-2xx expectation %q: want no refused p99 and 40 answers of 200", tests[2].want)
	}
	if got := vegetaStats(t, synth, 1); got != tests[1].want {
		t.Fatalf("the independent computation disagrees with the synthetic case: %q", got)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := lib(t, dir, "parse_vegeta "+strconv.Quote(tc.file)+" "+strconv.FormatFloat(tc.secs, 'f', -1, 64))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("parsed %q, want failure", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out != tc.want {
				t.Errorf("got  %q\nwant %q", out, tc.want)
			}
		})
	}
}

// TestStopRSS: stop ends one started process by its PID and forgets it;
// rss_mib reads a live process and says "-" for a gone one.
func TestStopRSS(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := lib(t, dir, `
		start a sleep 30; a=$PID
		start b sleep 30; b=$PID
		r=$(rss_mib "$a"); h=$(HWM=1 rss_mib "$a")
		stop "$a"
		gone=0; kill -0 "$a" 2>/dev/null || gone=1
		echo "$r $h $gone ${#PIDS[@]} $([[ ${PIDS[0]} == "$b" ]] && echo b) $(rss_mib "$a")"
		stop "$b"`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 6 {
		t.Fatalf("output %q", out)
	}
	rss, err1 := strconv.ParseFloat(f[0], 64)
	hwm, err2 := strconv.ParseFloat(f[1], 64)
	// The kernel folds a task's RSS into VmHWM lazily, so a young
	// process may show a peak below its current RSS: both just exist.
	if err1 != nil || err2 != nil || rss <= 0 || hwm <= 0 {
		t.Errorf("RSS %s MiB, peak %s MiB: want positive numbers", f[0], f[1])
	}
	if f[2] != "1" || f[3] != "1" || f[4] != "b" {
		t.Errorf("after stop: gone=%s, %s PIDs left, first %q; want gone, 1 left, the other one", f[2], f[3], f[4])
	}
	if f[5] != "-" {
		t.Errorf("rss_mib of a stopped process = %q, want -", f[5])
	}
}

// TestWaitedTicks: the CPU of waited-for children is counted once they
// have exited and been waited for, in the subshell that waited.
func TestWaitedTicks(t *testing.T) {
	out, err := lib(t, t.TempDir(), `
		x=$( waited_ticks t0
			bash -c 'end=$((SECONDS + 2)); while ((SECONDS < end)); do :; done'
			waited_ticks t1
			echo "$t0 $t1" )
		echo "$x"`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("output %q", out)
	}
	a, _ := strconv.Atoi(f[0])
	b, _ := strconv.Atoi(f[1])
	if b <= a {
		t.Errorf("waited ticks did not grow after a CPU-burning child: %d then %d", a, b)
	}
}

// TestLoadKnobs: load.sh refuses a bad knob before it starts anything,
// naming the variable. MESHD points nowhere, so a script that went on
// despite the knob would stop at the build with another message.
func TestLoadKnobs(t *testing.T) {
	for _, kv := range []string{
		"DURATION=0", "DURATION=ten", "RATES=500 1k", "RATES= ", "CLIENT_CONNS=-3",
		"OVERLOAD=0", "OVERLOAD=x", "SCHEME=ftp", "MAX_CONNS_PER_IP=none", "NEIGHBOURS=-1",
	} {
		name, _, _ := strings.Cut(kv, "=")
		cmd := exec.Command("bash", "load.sh")
		cmd.Env = append(os.Environ(), "MESHD=/nonexistent/meshd", kv)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%s: load.sh succeeded", kv)
			continue
		}
		if !strings.Contains(string(out), "FAILED: "+name+" ") {
			t.Errorf("%s: want a failure naming %s, got:\n%s", kv, name, out)
		}
	}
}
