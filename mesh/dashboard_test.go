package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chromium returns the path of Debian's chromium, skipping the test
// without it (failing under CI=true, where .ci/run installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	missingTool(t, "chromium not installed (apt-get install chromium): the dashboard is not driven in a browser")
	return ""
}

// headless runs chromium on url with extra flags (--dump-dom, or
// --screenshot) and returns its standard output. The page gets 5 s of
// virtual time, so its first fetches have answered and it has drawn.
// Chromium and the processes it starts are one process group, killed
// by its ID if it overruns.
func headless(t *testing.T, bin, url string, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// screenshotVariance loads a PNG and returns its size, the variance of
// its pixels' luminance and how many distinct colours it has.
func screenshotVariance(t *testing.T, file string) (w, h int, variance float64, colours int) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", file, err)
	}
	b := img.Bounds()
	var sum, sq float64
	seen := map[uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			l := 0.299*float64(r>>8) + 0.587*float64(g>>8) + 0.114*float64(bl>>8)
			sum += l
			sq += l * l
			seen[r>>11<<10|g>>11<<5|bl>>11] = true
		}
	}
	n := float64(b.Dx() * b.Dy())
	mean := sum / n
	return b.Dx(), b.Dy(), sq/n - mean*mean, len(seen)
}

var (
	cardTag  = regexp.MustCompile(`<div class="card"[^>]*>`)
	attr     = regexp.MustCompile(`data-(listener|service|requests|errors)="([^"]*)"`)
	fieldNum = regexp.MustCompile(`<span data-field="(requests|errors)">(\d+)</span>`)
)

// dashboardCards parses the golden-signal cards of a rendered dashboard:
// listener/service → requests and errors, from the cards' data attributes;
// it fails the test where the visible numbers disagree with them.
func dashboardCards(t *testing.T, dom string) map[string][2]int {
	t.Helper()
	out := map[string][2]int{}
	locs := cardTag.FindAllStringIndex(dom, -1)
	for i, loc := range locs {
		end := len(dom)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		a := map[string]string{}
		for _, m := range attr.FindAllStringSubmatch(dom[loc[0]:loc[1]], -1) {
			a[m[1]] = m[2]
		}
		req, _ := strconv.Atoi(a["requests"])
		errs, _ := strconv.Atoi(a["errors"])
		key := a["listener"] + "/" + a["service"]
		shown := map[string]int{}
		for _, m := range fieldNum.FindAllStringSubmatch(dom[loc[1]:end], -1) {
			shown[m[1]], _ = strconv.Atoi(m[2])
		}
		if shown["requests"] != req || shown["errors"] != errs {
			t.Errorf("card %s shows %v, its attributes say requests %d errors %d", key, shown, req, errs)
		}
		out[key] = [2]int{req, errs}
	}
	return out
}

// TestDashboardInBrowser drives each hop's dashboard in headless Chromium
// after a known number of requests: the golden-signal numbers it renders
// equal the node's /metrics, the region map and the policy versions are
// drawn, and screenshots at 1280×800 and at a phone's size are not blank.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes and a browser: skipped with -short")
	}
	bin := chromium(t)
	g := startGoldenMesh(t)
	g.send(t)
	// Every hop has counted the traffic before the browser looks.
	poll(t, 5*time.Second, "the sidecar counts 25 requests", func() error {
		if v := sample(scrape(t, g.web), "meshd_requests_total", map[string]string{"listener": "mesh", "service": "web", "route": "api"}); v != 10 {
			return fmt.Errorf("%v /api requests", v)
		}
		return nil
	})

	for _, h := range []struct {
		n        *Node
		listener string
	}{{g.edge, "public"}, {g.gw, "mesh"}, {g.web, "mesh"}} {
		name := h.n.Config.Name
		url := "http://" + h.n.Addrs()["admin"] + "/"
		dom := string(headless(t, bin, url, "--window-size=1280,800", "--dump-dom"))
		if !strings.Contains(dom, `data-loaded="`) {
			t.Fatalf("%s: the dashboard did not load its data:\n%s", name, dom)
		}
		cards := dashboardCards(t, dom)
		fams := scrape(t, h.n)
		want := map[string][2]int{}
		for _, m := range fams["meshd_requests_total"].GetMetric() {
			l := map[string]string{}
			for _, p := range m.Label {
				l[p.GetName()] = p.GetValue()
			}
			svc := l["service"]
			if svc == "" {
				svc = "(none)"
			}
			k := l["listener"] + "/" + svc
			v := want[k]
			v[0] += int(m.Counter.GetValue())
			if l["code_class"] == "5xx" {
				v[1] += int(m.Counter.GetValue())
			}
			want[k] = v
		}
		if len(want) == 0 || want[h.listener+"/web"][0] < 25 {
			t.Fatalf("%s: /metrics counts %v, want at least 25 requests for web", name, want)
		}
		for k, v := range want {
			if cards[k] != v {
				t.Errorf("%s: dashboard card %s shows requests, 5xx = %v; /metrics says %v", name, k, cards[k], v)
			}
		}
		for k := range cards {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: dashboard card %s has no series in /metrics", name, k)
			}
		}
		// The region map and the policy versions.
		if !regexp.MustCompile(`data-region="eu" data-state="ok"`).MatchString(dom) {
			t.Errorf("%s: the region map has no healthy region eu", name)
		}
		if h.n != g.web && !strings.Contains(dom, `data-edge="edge-1"`) {
			t.Errorf("%s: the region map has no edge-1", name)
		}
		if !strings.Contains(dom, ">v1</td>") || !strings.Contains(dom, "policy v1") {
			t.Errorf("%s: the policy versions are not shown", name)
		}
	}

	// The edge's dashboard, as a screen and as a phone shows it.
	url := "http://" + g.edge.Addrs()["admin"] + "/"
	for _, size := range [][2]int{{1280, 800}, {390, 844}} {
		file := filepath.Join(t.TempDir(), fmt.Sprintf("dashboard-%dx%d.png", size[0], size[1]))
		headless(t, bin, url, fmt.Sprintf("--window-size=%d,%d", size[0], size[1]), "--screenshot="+file, "--hide-scrollbars")
		w, h, variance, colours := screenshotVariance(t, file)
		if w != size[0] || h != size[1] {
			t.Errorf("screenshot %s is %d×%d", file, w, h)
		}
		// A blank or single-colour page has a variance near 0 and a
		// handful of colours; text, cards and charts give hundreds.
		if variance < 100 || colours < 20 {
			t.Errorf("screenshot %d×%d looks blank: luminance variance %.1f, %d colours", size[0], size[1], variance, colours)
		}
		t.Logf("screenshot %d×%d: luminance variance %.1f, %d colours", size[0], size[1], variance, colours)
		if dir := os.Getenv("MESHD_SCREENSHOT_DIR"); dir != "" {
			if b, err := os.ReadFile(file); err == nil {
				os.WriteFile(filepath.Join(dir, filepath.Base(file)), b, 0o644)
			}
		}
	}

	// /v1/signals, which the page draws, agrees with the cards too.
	_, body, err := adminGetTCP(g.edge, "/v1/signals")
	if err != nil {
		t.Fatal(err)
	}
	var sig Signals
	if err := json.Unmarshal([]byte(body), &sig); err != nil {
		t.Fatal(err)
	}
	for _, s := range sig.Lines {
		if s.Listener == "public" && s.Service == "web" {
			if len(s.Points) != tlSlots || s.Rate <= 0 || s.SuccessRate != 1 || s.P50 <= 0 || s.P99 < s.P50 {
				t.Errorf("edge signals for web: %d points, rate %v, success %v, p50 %v, p99 %v", len(s.Points), s.Rate, s.SuccessRate, s.P50, s.P99)
			}
		}
	}
}
