// Command meshd runs a node of a global service mesh: an edge, an ingress
// gateway or a sidecar, with mutual TLS on every hop and gossip instead of a
// control plane. `meshd demo` runs a whole two-region mesh on loopback.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/tlsmgr"
)

// version is set at build time with -ldflags "-X main.version=..."; without
// it the module version or VCS revision from the build info is used.
var version = ""

const usage = `meshd: one binary for a global service mesh

Usage:
  meshd run --role=edge|gateway|sidecar [flags]   run a node (meshd run -h)
  meshd demo                                      a whole two-region mesh on loopback
  meshd ca init --trust-domain TD --dir DIR       create a mesh CA and gossip key
  meshd ca root [--data-dir DIR]                  print the root of an edge's internal public CA, to trust
  meshd ca issue --dir DIR --id SPIFFE-ID --cert F --key F [--ttl D]
                                                  issue an SVID for a node without the CA key
  meshd ca operator --dir DIR [--name N]          add an operator key (signs policies) to a CA directory
  meshd ca rotate begin|switch|finish --dir DIR [--admin A[,B...]]
                                                  replace the root CA in three steps without an outage
  meshd ca status [--dir DIR] [--node NAME | --admin A[,B...]]
                                                  which roots each node trusts and issues from (exit 1 while one is behind)
  meshd apply -f FILE --ca-dir DIR | --key F [--node NAME | --admin ADDR]
                                                  sign a traffic policy and hand it to a node; gossip spreads it
  meshd status policy [--node NAME | --admin ADDR]
                                                  the policy version every node runs (exit 1 while one is behind)
  meshd check policy FILE                         validate a policy document
  meshd check [--config FILE | flags of run]      preflight of a node: config, certificates, CA key, ports, seeds, clock, BGP peers
  meshd gossip keyring list|install|use|remove [--key B64 | --key-file F] [--node NAME | --admin A[,B...]]
                                                  rotate the gossip key without a restart: install, use, remove on every node
  meshd reload [--node NAME | --admin ADDR]       re-read a node's config file and certificates (as SIGHUP does)
  meshd explain URL [--from SERVICE] [--method M] [--node NAME | --admin ADDR] [--json]
                                                  why a node sends a request where it does, or refuses it
  meshd members [--node NAME | --admin ADDR]      gossip members a node sees
  meshd services [--node NAME | --admin ADDR]     services a node sees
  meshd routes [--node NAME | --admin ADDR]       where a node sends each service's requests now
  meshd bgp [--node NAME | --admin ADDR]          an edge's BGP sessions and announced prefixes
  meshd cache purge URL | --prefix P | --tag T [--node NAME | --admin ADDR]
                                                  purge an edge's cache; gossip takes it to every edge
  meshd wait [--node NAME | --admin ADDR] [--service S ...] [--timeout D]
                                                  wait until a node is ready and routes the services
  meshd app --listen ADDR [--service S --name N --region R]
                                                  a small echo app to put behind a sidecar
  meshd version
`

// errUsage marks errors caused by the command line (exit code 2).
var errUsage = errors.New("usage")

func main() {
	execWithExtendedConnect()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "meshd: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// execWithExtendedConnect starts meshd again, in the same process (execve),
// with GODEBUG=http2xconnect=1 when it is about to serve a mesh (run,
// demo): Go's HTTP/2 server offers RFC 8441's extended CONNECT (WebSocket
// over HTTP/2) only when the process starts with that setting, which
// net/http reads once at initialization, and go.mod's godebug does not
// know it. An operator's own http2xconnect setting (=0 keeps it off) is
// left as it is; where the exec fails, meshd goes on without it and
// WebSocket clients use HTTP/1.1.
func execWithExtendedConnect() {
	if runtime.GOOS != "linux" || len(os.Args) < 2 || (os.Args[1] != "run" && os.Args[1] != "demo") {
		return
	}
	gd := os.Getenv("GODEBUG")
	if strings.Contains(gd, "http2xconnect=") {
		return
	}
	if gd != "" {
		gd += ","
	}
	env := []string{"GODEBUG=" + gd + "http2xconnect=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	_ = syscall.Exec("/proc/self/exe", os.Args, env) // returns only when it failed
}

// run is meshd without the process: it returns what main reports.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "ca":
		return cmdCA(ctx, args[1:], stdout, stderr)
	case "members":
		return cmdTable(ctx, "members", args[1:], stdout, stderr)
	case "services":
		return cmdTable(ctx, "services", args[1:], stdout, stderr)
	case "routes":
		return cmdTable(ctx, "routes", args[1:], stdout, stderr)
	case "bgp":
		return cmdTable(ctx, "bgp", args[1:], stdout, stderr)
	case "cache":
		return cmdCache(ctx, args[1:], stdout, stderr)
	case "app":
		return cmdApp(ctx, args[1:], stdout, stderr)
	case "wait":
		return cmdWait(ctx, args[1:], stdout, stderr)
	case "apply":
		return cmdApply(ctx, args[1:], stdout, stderr)
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr)
	case "check":
		return cmdCheck(ctx, args[1:], stdout, stderr)
	case "gossip":
		return cmdGossip(ctx, args[1:], stdout, stderr)
	case "reload":
		return cmdReload(ctx, args[1:], stdout, stderr)
	case "explain":
		return cmdExplain(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "meshd %s (%s, %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

// flagSet is a flag set that lists its flags on -h only: a mistyped flag
// gets one line naming it and where the list is, not the list itself
// (`meshd run` has dozens of flags around the one error).
type flagSet struct {
	*flag.FlagSet
	stderr io.Writer
}

func newFlagSet(name string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the flag package prints errors and usage there
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, stderr: stderr}
}

// parseFlags wraps flag errors so main exits 2 on them.
func parseFlags(fs *flagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q (see %s -h)", errUsage, fs.Arg(0), fs.Name())
	}
	return nil
}

// flagError is what a failed fs.Parse returns: flag.ErrHelp after -h,
// once the flags are listed, or a usage error that says where they are.
func flagError(fs *flagSet, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(fs.stderr, "Usage of %s:\n", fs.Name())
		fs.SetOutput(fs.stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return err
	}
	return fmt.Errorf("%w: %v (see %s -h)", errUsage, err, fs.Name())
}

// listFlag is a repeatable (or comma-separated) flag. Its first Set
// replaces values that came from the config file instead of adding to them.
type listFlag struct {
	v       *[]string
	set     bool
	noComma bool // values contain commas themselves (--bgp-peer)
}

func (l *listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l *listFlag) Set(s string) error {
	if !l.set {
		*l.v, l.set = nil, true
	}
	if l.noComma {
		*l.v = append(*l.v, strings.TrimSpace(s))
		return nil
	}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// configPath finds --config in args before the flags are parsed, so the
// file's values become the flags' defaults and flags override the file.
func configPath(args []string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		for _, p := range []string{"--config=", "-config="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v
			}
		}
		if (a == "--config" || a == "-config") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// loadRunConfig is the configuration of `meshd run ARGS`: the config file,
// then the flags over it, defaults, validated; errors name the field and
// the file position. A reload calls it again with the same arguments.
func loadRunConfig(args []string, stderr io.Writer) (mesh.Config, *mesh.Positions, error) {
	var cfg mesh.Config
	var pos *mesh.Positions
	if path := configPath(args); path != "" {
		var err error
		if pos, err = mesh.LoadFile(path, &cfg); err != nil {
			return cfg, pos, err
		}
	}
	fs := newFlagSet("meshd run", stderr)
	fs.String("config", "", "YAML file with any of these flags as keys; flags override it")
	bindConfigFlags(fs.FlagSet, &cfg)
	if err := parseFlags(fs, args); err != nil {
		return cfg, pos, err
	}
	cfg.SetDefaults()
	// The admin API is on by default for `meshd run`, on the node's own
	// unix socket, so `meshd members` works without flags and several
	// nodes on one host never collide; a flag or the config file may move
	// it or turn it off (empty).
	adminSet := pos != nil && pos.Lines["admin"] != 0
	fs.Visit(func(f *flag.Flag) { adminSet = adminSet || f.Name == "admin" })
	if !adminSet && cfg.Name != "" {
		cfg.Admin = mesh.AdminSocket(cfg.Name)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, pos, pos.Annotate(err)
	}
	return cfg, pos, nil
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, pos, err := loadRunConfig(args, stderr)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	logger := newLogger(stderr, cfg.LogFormat, cfg.LogLevel, level)
	slog.SetDefault(logger)
	gc, err := tuneGC(os.Getenv, cfg.Role, cfg.CacheBytes())
	if err != nil {
		return err
	}
	if gc.Percent > 0 {
		debug.SetGCPercent(gc.Percent)
	}
	if gc.Limit > 0 {
		debug.SetMemoryLimit(gc.Limit)
	}
	logger.Debug("garbage collector", "role", cfg.Role, "gogc", gc.Percent, "memory_limit", gc.Limit)

	warnCAKey(logger, &cfg)
	node := &mesh.Node{Config: cfg, Logger: logger, LogLevel: level,
		LoadConfig: func() (mesh.Config, error) {
			c, _, err := loadRunConfig(args, io.Discard)
			return c, err
		}}
	// SIGHUP is taken before the start, so that one sent as soon as the
	// node says it started never kills it (the default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := node.Start(ctx); err != nil {
		return pos.Annotate(err)
	}
	sd := newNotifier(logger)
	defer sd.close()
	sdCtx, sdStop := context.WithCancel(context.Background())
	go sd.run(sdCtx, node.Ready)
	go dropStartupPages(sdCtx, logger, node.Ready)
	for ctx.Err() == nil {
		select {
		case <-hup:
			// Reload logs what it applied and what needs a restart.
			if _, err := node.Reload(); err != nil {
				logger.Error("reload refused; still serving the previous configuration", "err", err)
			}
		case <-ctx.Done():
		}
	}
	sdStop()
	sd.send("STOPPING=1\nSTATUS=draining")
	// Shutdown gets its own bounded context: the signal that ended ctx
	// must not cut the drain short.
	limit := cfg.DrainDelay + cfg.ShutdownGrace + 5*time.Second
	sctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return node.Shutdown(sctx)
}

// gcPolicy is what a node sets on Go's garbage collector: Percent is
// GOGC, Limit the soft memory limit (GOMEMLIMIT) in bytes; 0 leaves the
// runtime's own setting (GOGC=100, no limit) or the operator's.
type gcPolicy struct {
	Percent int
	Limit   int64
}

// The collector's settings per role, chosen by measurement (README,
// "Memory"). A proxy's live heap is small beside what it allocates per
// request, so most of the heap a cycle lets grow is garbage, and each role
// weighs that memory against the collector's CPU:
//
//   - sidecar: Go's default GOGC=100, no limit. Its live heap is 3-5 MiB
//     and a sidecar runs beside every instance of every service. At
//     1,000 req/s, per sidecar (GODEBUG=gctrace=1, 20,000 requests):
//     GOGC=400 ran 6-7 cycles, 2-10 us of GC CPU per request, and left
//     20-22 MiB of anonymous memory resident; GOGC=100 ran 39-44 cycles,
//     14 us per request (of ~240 us the sidecar spends), and left 9-10
//     MiB; GOGC=50 doubled the cycles again for 1-2 MiB less, and so did
//     a soft limit (GOMEMLIMIT=12MiB: up to 224 cycles). Its live heap
//     grows with its connections, so a fixed limit would only make the
//     collector run without end under a burst.
//   - edge and gateway: GOGC=400, which cut the CPU of an edge cache hit
//     by 15% (bench/cache-hits.sh), and a soft limit of the edge cache's
//     size plus gcHeadroom, so that a full cache, or a gateway's burst of
//     connections, does not let the heap grow to five times its size: the
//     collector works harder instead.
const (
	edgeGCPercent    = 400
	gatewayGCPercent = 400
	sidecarGCPercent = 100
	gcHeadroom       = 1 << 30
)

// roleGC returns the collector's settings of a role; cacheBytes is the
// edge's cache size.
func roleGC(role string, cacheBytes int64) gcPolicy {
	switch role {
	case mesh.RoleEdge:
		return gcPolicy{Percent: edgeGCPercent, Limit: cacheBytes + gcHeadroom}
	case mesh.RoleGateway:
		return gcPolicy{Percent: gatewayGCPercent, Limit: gcHeadroom}
	default:
		return gcPolicy{Percent: sidecarGCPercent}
	}
}

// tuneGC returns the role's settings less what the operator chose: GOGC
// in the environment keeps the runtime's percent, GOMEMLIMIT its limit;
// each is decided on its own, so GOGC=200 alone still gets the role's
// limit. A GOGC the runtime would silently read as 100 is an error (the
// runtime itself stops at a malformed GOMEMLIMIT).
func tuneGC(getenv func(string) string, role string, cacheBytes int64) (gcPolicy, error) {
	p := roleGC(role, cacheBytes)
	if v := getenv("GOGC"); v != "" {
		if _, err := strconv.Atoi(v); err != nil && v != "off" {
			return gcPolicy{}, fmt.Errorf("GOGC=%s: want a percentage (a whole number) or off", v)
		}
		p.Percent = 0
	}
	if getenv("GOMEMLIMIT") != "" {
		p.Limit = 0
	}
	return p, nil
}

// bindConfigFlags defines one flag per field of mesh.Config, named by its
// yaml key and described by its usage tag, with the value already in cfg
// (from the config file) as default: a flag given overrides the file, one
// not given leaves it. The flags and the file's keys cannot drift apart.
func bindConfigFlags(fs *flag.FlagSet, cfg *mesh.Config) {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, usage := f.Tag.Get("yaml"), f.Tag.Get("usage")
		if name == "" || usage == "" {
			continue
		}
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, usage)
		case *bool:
			fs.BoolVar(p, name, *p, usage)
		case *int:
			fs.IntVar(p, name, *p, usage)
		case *time.Duration:
			fs.DurationVar(p, name, *p, usage)
		case *[]string:
			fs.Var(&listFlag{v: p, noComma: f.Tag.Get("list") == "repeat"}, name, usage)
		default:
			panic("mesh.Config field " + f.Name + " has a type bindConfigFlags does not know")
		}
	}
}

// newLogger logs at level into lv, which a reload may change.
func newLogger(w io.Writer, format, level string, lv *slog.LevelVar) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "issue" {
		return cmdCAIssue(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "rotate" {
		return cmdCARotate(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "status" {
		return cmdCAStatus(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "root" {
		fs := newFlagSet("meshd ca root", stderr)
		var c mesh.Config
		c.SetDefaults()
		dir := fs.String("data-dir", c.DataDir, "the edge's --data-dir")
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		pem, err := tlsmgr.InternalRoot(*dir)
		if err != nil {
			return fmt.Errorf("ca root: %w (an edge with --tls internal creates it on first start)", err)
		}
		_, err = stdout.Write(pem)
		return err
	}
	if len(args) > 0 && args[0] == "operator" {
		fs := newFlagSet("meshd ca operator", stderr)
		dir := fs.String("dir", "", "the CA directory (with ca.key) to write operator.crt and operator.key into")
		name := fs.String("name", tlsmgr.DefaultOperator, "operator name: spiffe://<td>/operator/<name>")
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			return fmt.Errorf("%w: ca operator needs --dir", errUsage)
		}
		if err := tlsmgr.WriteOperator(*dir, *name); err != nil {
			return fmt.Errorf("ca operator: %w", err)
		}
		fmt.Fprintf(stdout, "wrote %s/{operator.crt,operator.key}: meshd apply signs policies with it; keep it off the nodes\n", *dir)
		return nil
	}
	if len(args) == 0 || args[0] != "init" {
		return fmt.Errorf("%w: meshd ca init|issue|operator|root|rotate|status (meshd ca init -h)", errUsage)
	}
	fs := newFlagSet("meshd ca init", stderr)
	td := fs.String("trust-domain", "", "SPIFFE trust domain of the mesh, e.g. mesh.example")
	dir := fs.String("dir", "", "directory to write ca.crt, ca.key and gossip.key into")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *td == "" || *dir == "" {
		return fmt.Errorf("%w: ca init needs --trust-domain and --dir", errUsage)
	}
	if err := tlsmgr.InitCA(*dir, *td); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	if err := tlsmgr.WriteOperator(*dir, tlsmgr.DefaultOperator); err != nil {
		return fmt.Errorf("ca init: operator key: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s/{ca.crt,ca.key,gossip.key,operator.crt,operator.key} for trust domain %s\n", *dir, *td)
	fmt.Fprintf(stdout, "give every node --ca-dir %s; keep ca.key, gossip.key and operator.key secret (meshd apply signs policies with operator.key)\n", *dir)
	return nil
}

func cmdCAIssue(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd ca issue", stderr)
	dir := fs.String("dir", "", "CA directory written by `meshd ca init` (needs ca.key)")
	id := fs.String("id", "", "SPIFFE ID to issue, e.g. spiffe://TD/service/web")
	cert := fs.String("cert", "", "file to write the certificate to")
	key := fs.String("key", "", "file to write the key to (mode 0600)")
	ttl := fs.Duration("ttl", 30*24*time.Hour, "lifetime of the SVID")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" || *id == "" || *cert == "" || *key == "" {
		return fmt.Errorf("%w: ca issue needs --dir, --id, --cert and --key", errUsage)
	}
	if err := tlsmgr.IssueFiles(*dir, *id, *ttl, *cert, *key); err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s and %s for %s, valid %v\n", *cert, *key, *id, *ttl)
	return nil
}

// cmdTable prints /v1/members or /v1/services of a node's admin API.
func cmdTable(ctx context.Context, what string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd "+what, stderr)
	admin, node := adminFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	target, err := mesh.FindAdmin(*admin, *node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.Base+"/v1/"+what, nil)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	resp, err := target.Client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API of %s: %w", target.Label, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin API of %s answered %s", target.Label, resp.Status)
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch what {
	case "members":
		var ms []mesh.MemberInfo
		if err := json.Unmarshal(body, &ms); err != nil {
			return fmt.Errorf("admin: bad answer: %w", err)
		}
		fmt.Fprintln(tw, "POOL\tNAME\tROLE\tREGION\tSTATE\tMESH ADDR\tGOSSIP\tSERVICES")
		for _, m := range ms {
			state := m.State
			if m.Suspect {
				state += " (suspect)"
			}
			var svcs []string
			for _, s := range m.Services {
				svcs = append(svcs, fmt.Sprintf("%s(%d)", s.Name, s.Healthy))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Pool, m.Name, m.Role, dash(m.Region), state,
				dash(m.MeshAddr), m.Gossip, dash(strings.Join(svcs, " ")))
		}
	case "bgp":
		var st mesh.BGPStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("admin: bad answer: %w", err)
		}
		if !st.Enabled {
			fmt.Fprintln(tw, "BGP is off on this node (no --anycast)")
			return nil
		}
		fmt.Fprintf(tw, "ASN %d, router ID %s, can serve: %v, announce: %v\n\n", st.Speaker.ASN, st.Speaker.RouterID, st.Gate.CanServe, st.Gate.Announce)
		fmt.Fprintln(tw, "PREFIX\tSTATE\tSINCE")
		for _, p := range st.Speaker.Prefixes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Prefix, p.State, p.Since.Format(time.RFC3339))
		}
		fmt.Fprintln(tw, "\nPEER\tASN\tSTATE\tUPTIME\tFLAPS\tBFD\tLAST ERROR")
		for _, p := range st.Speaker.Peers {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", p.Addr, p.ASN, p.State,
				(time.Duration(p.UptimeSeconds) * time.Second).String(), p.Flaps, dash(p.BFD), dash(p.LastError))
		}
	case "services":
		var ss []mesh.ServiceInfo
		if err := json.Unmarshal(body, &ss); err != nil {
			return fmt.Errorf("admin: bad answer: %w", err)
		}
		fmt.Fprintln(tw, "SERVICE\tREGION\tHEALTHY\tINSTANCES\tGATEWAYS\tDOMAINS")
		for _, s := range ss {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", s.Service, s.Region, s.Healthy,
				dash(strings.Join(s.Instances, ",")), dash(strings.Join(s.Gateways, ",")), dash(strings.Join(s.Domains, ",")))
		}
	case "routes":
		var rs []mesh.RouteInfo
		if err := json.Unmarshal(body, &rs); err != nil {
			return fmt.Errorf("admin: bad answer: %w", err)
		}
		fmt.Fprintln(tw, "SERVICE\tVIA\t#\tUPSTREAM\tADDR\tIN FLIGHT\tRTT\tLATENCY\tDOMAINS")
		for _, r := range rs {
			for i, u := range r.Upstreams {
				rtt := "-"
				if u.RTTMillis > 0 {
					rtt = fmt.Sprintf("%.2fms", u.RTTMillis)
				}
				name := u.Name
				if u.Ejected {
					name += " (ejected)"
				}
				lat := "-"
				if u.LatencyMillis > 0 {
					lat = fmt.Sprintf("%.2fms", u.LatencyMillis)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Service, r.Via, i+1, name, u.Addr,
					u.InFlight, rtt, lat, dash(strings.Join(r.Domains, ",")))
			}
		}
		header := false
		for _, r := range rs {
			c := r.Conflict
			if c == nil {
				continue
			}
			if !header {
				fmt.Fprintln(tw, "\nREFUSED HOST\tCLAIMED BY\tVIA NODES\tOWNER\tOWNER NODES\tREASON")
				header = true
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Domain, c.Refused, dash(strings.Join(c.RefusedNodes, ",")),
				c.Owner, dash(strings.Join(c.OwnerNodes, ",")), c.Reason)
		}
	}
	return nil
}

func cmdCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "purge" {
		return fmt.Errorf("%w: meshd cache purge URL | --prefix P | --tag T", errUsage)
	}
	fs := newFlagSet("meshd cache purge", stderr)
	admin, node := adminFlags(fs)
	var req mesh.PurgeRequest
	fs.StringVar(&req.Prefix, "prefix", "", "purge every URL that starts with this (http(s)://host/path)")
	fs.StringVar(&req.Tag, "tag", "", "purge every response tagged so by the origin (Cache-Tag or Surrogate-Key)")
	// The URL may come before or after the flags.
	rest := args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		req.URL, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return flagError(fs, err)
	}
	if fs.NArg() == 1 && req.URL == "" {
		req.URL = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	target, err := mesh.FindAdmin(*admin, *node)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var res mesh.PurgeResult
	if err := adminPostJSON(ctx, target, "/v1/cache/purge", body, "purge", &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "purged %d entries here; purge %s goes to %d edges\n", res.Removed, res.ID, res.Edges)
	return nil
}

// adminFlags are how a command names the node it asks.
func adminFlags(fs *flagSet) (admin, node *string) {
	admin = fs.String("admin", "", "admin address of the node to ask: unix:PATH or HOST:PORT (default: the --node's socket)")
	node = fs.String("node", "", "name of the node on this host to ask, by its admin socket in "+mesh.AdminDir()+
		" (default: the only node there, else "+mesh.DefaultAdminTCP+", the demo's edge)")
	return admin, node
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd demo", stderr)
	opts := mesh.DemoOptions{}
	fs.StringVar(&opts.HTTP, "http", "127.0.0.1:8480", "the edge's public HTTP address")
	fs.StringVar(&opts.HTTPS, "https", "127.0.0.1:8443", "the edge's public HTTPS address")
	fs.StringVar(&opts.Admin, "admin", "127.0.0.1:9901", "the edge's admin address")
	fs.StringVar(&opts.LogLevel, "log-level", "warn", "log level of the demo's nodes")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts.Stdout, opts.Stderr = stdout, stderr
	return mesh.RunDemo(ctx, opts)
}

// cmdApp runs the demo's echo app on its own, so that a mesh started from a
// shell has something to put behind its sidecars.
func cmdApp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd app", stderr)
	listen := fs.String("listen", "127.0.0.1:9001", "address to serve HTTP on")
	service := fs.String("service", "app", "service name the answers report")
	name := fs.String("name", "", "instance name the answers report (default: the host name)")
	region := fs.String("region", "", "region the answers report")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	srv := &http.Server{Handler: mesh.EchoHandler(*service, *name, *region), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "meshd app: %s (%s) answers on http://%s\n", *service, *name, ln.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("app: %w", err)
	}
	return nil
}

// cmdWait waits until a node's admin API answers, the node is ready and it
// has a route with at least one upstream for each service named: what a
// script needs before it sends its first request.
func cmdWait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd wait", stderr)
	admin, node := adminFlags(fs)
	var services []string
	fs.Var(&listFlag{v: &services}, "service", "service the node must have a route for (repeatable or comma-separated)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	label := cmp.Or(*node, *admin, "the node")
	var last error
	said := ""
	for {
		if last = waitOnce(ctx, *admin, *node, services); last == nil {
			what := "ready"
			if len(services) > 0 {
				what += "; routes " + strings.Join(services, ", ")
			}
			fmt.Fprintf(stdout, "%s: %s\n", label, what)
			return nil
		}
		// Each new reason once (no SVID yet, no catalog yet, ...): a
		// script's log shows what the start waited for.
		if why := last.Error(); why != said {
			fmt.Fprintf(stderr, "%s: waiting: %s\n", label, why)
			said = why
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait: %s not ready after %v: %w", label, *timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func waitOnce(ctx context.Context, admin, node string, services []string) error {
	target, err := mesh.FindAdmin(admin, node)
	if err != nil {
		return err
	}
	get := func(path string) (int, []byte, error) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, target.Base+path, nil)
		resp, err := target.Client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		return resp.StatusCode, b, err
	}
	code, body, err := get("/readyz")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s", strings.TrimSpace(string(body)))
	}
	if len(services) == 0 {
		return nil
	}
	code, body, err = get("/v1/routes")
	if err != nil {
		return err
	}
	var rs []mesh.RouteInfo
	if code != http.StatusOK || json.Unmarshal(body, &rs) != nil {
		return fmt.Errorf("admin /v1/routes answered %d", code)
	}
	for _, svc := range services {
		found := false
		for _, r := range rs {
			found = found || (r.Service == svc && len(r.Upstreams) > 0)
		}
		if !found {
			return fmt.Errorf("no route for service %q yet", svc)
		}
	}
	return nil
}

// warnCAKey warns when a sidecar runs with the CA key beside it (see
// mesh.CAKeyWarning); meshd demo, all on one machine, does not warn.
func warnCAKey(logger *slog.Logger, cfg *mesh.Config) {
	if msg := mesh.CAKeyWarning(cfg); msg != "" {
		logger.Warn(msg, "ca_dir", cfg.CADir)
	}
}

// cmdReload asks a running node to read its configuration again (as
// SIGHUP does) and prints what it applied and what needs a restart.
func cmdReload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd reload", stderr)
	admin, node := adminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	target, err := mesh.FindAdmin(*admin, *node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var res mesh.ReloadResult
	if err := adminPostJSON(ctx, target, "/v1/reload", nil, "reload", &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: reloaded\n%s", target.Label, res.String())
	return nil
}

// cmdExplain asks a node why a request for a URL goes where it goes.
func cmdExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd explain", stderr)
	admin, node := adminFlags(fs)
	from := fs.String("from", "", "explain the request as this service calls it (default: the node's own identity: the public at an edge, the app at a sidecar)")
	method := fs.String("method", "GET", "the request's method")
	asJSON := fs.Bool("json", false, "print the explanation as JSON")
	// The URL may come before or after the flags.
	var rawURL string
	rest := args
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		rawURL, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return flagError(fs, err)
	}
	if fs.NArg() == 1 && rawURL == "" {
		rawURL = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if rawURL == "" {
		return fmt.Errorf("%w: meshd explain URL (e.g. https://web.example/ at an edge, http://api.mesh/ at a sidecar)", errUsage)
	}
	target, err := mesh.FindAdmin(*admin, *node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q := url.Values{"url": {rawURL}, "method": {*method}}
	if *from != "" {
		q.Set("from", *from)
	}
	var e mesh.Explanation
	if err := adminGetJSON(ctx, target, "/v1/explain?"+q.Encode(), &e); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(&e)
	}
	_, err = io.WriteString(stdout, e.String())
	return err
}
