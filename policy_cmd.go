package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/tlsmgr"
)

// applyOperatorTTL is the life of an operator certificate minted from the
// CA key for one `meshd apply`: nodes check the signature against the
// certificate as it was at signing, so it need not outlive the apply.
const applyOperatorTTL = 10 * time.Minute

// cmdApply signs a policy document with the operator key and hands it to
// one node, which spreads it to the mesh.
func cmdApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd apply", stderr)
	admin, node := adminFlags(fs)
	file := fs.String("f", "", "the policy document (YAML) to apply; - for standard input")
	caDir := fs.String("ca-dir", "", "CA directory holding operator.key (or ca.key, to mint an operator key for this apply)")
	keyFile := fs.String("key", "", "operator key file (meshd ca operator), kept off the nodes; instead of --ca-dir")
	certFile := fs.String("cert", "", "operator certificate of --key (default: --key with .crt for .key)")
	version := fs.Uint64("version", 0, "version to apply (default: the document's version:, else one more than the node runs)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: apply needs -f FILE", errUsage)
	}
	if (*caDir == "") == (*keyFile == "") {
		return fmt.Errorf("%w: apply needs exactly one of --ca-dir and --key", errUsage)
	}
	doc, name, err := readPolicyFile(*file)
	if err != nil {
		return err
	}
	parsed, err := policy.Parse(name, doc)
	if err != nil {
		return err
	}
	var op *tlsmgr.Operator
	if *keyFile != "" {
		cert := *certFile
		if cert == "" {
			cert = strings.TrimSuffix(*keyFile, ".key") + ".crt"
		}
		op, err = tlsmgr.LoadOperator(cert, *keyFile)
	} else {
		op, err = tlsmgr.OperatorFromCADir(*caDir, applyOperatorTTL)
	}
	if err != nil {
		return fmt.Errorf("operator key: %w", err)
	}
	target, err := mesh.FindAdmin(*admin, *node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v := *version
	if v == 0 {
		v = parsed.Version
	}
	if v == 0 {
		var cur mesh.PolicyInfo
		if err := adminGetJSON(ctx, target, "/v1/policy", &cur); err != nil {
			return err
		}
		v = cur.Version + 1
	}
	signed, err := policy.Sign(doc, v, time.Now(), op.Key, op.Chain)
	if err != nil {
		return err
	}
	body, err := signed.Marshal()
	if err != nil {
		return err
	}
	var res mesh.ApplyResult
	if err := adminPostJSON(ctx, target, "/v1/policy", body, "policy", &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "policy version %d, signed by %s, runs on %s; gossip takes it to the mesh (meshd status policy)\n",
		res.Version, res.Signer, target.Label)
	return nil
}

// parseAdminFlags parses a command that has only the admin flags and
// finds the node they name.
func parseAdminFlags(fs *flagSet, args []string) (*mesh.AdminTarget, error) {
	admin, node := adminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return mesh.FindAdmin(*admin, *node)
}

// adminPostJSON posts a JSON body to the admin API and decodes its JSON
// answer into v; an answer other than 200 is an error "<what> refused by
// <node>: <its message>".
func adminPostJSON(ctx context.Context, target *mesh.AdminTarget, path string, body []byte, what string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.Base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := target.Client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API of %s: %w", target.Label, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s refused by %s: %s", what, target.Label, strings.TrimSpace(string(out)))
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("admin: bad answer: %w", err)
	}
	return nil
}

func readPolicyFile(path string) ([]byte, string, error) {
	if path == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
		return b, "<stdin>", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	return b, path, nil
}

func adminGetJSON(ctx context.Context, target *mesh.AdminTarget, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.Base+path, nil)
	if err != nil {
		return err
	}
	resp, err := target.Client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API of %s: %w", target.Label, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("admin %s%s: %s: %s", target.Label, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(v)
}

// cmdStatus: meshd status policy.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "policy" {
		return fmt.Errorf("%w: meshd status policy [--node NAME | --admin ADDR]", errUsage)
	}
	target, err := parseAdminFlags(newFlagSet("meshd status policy", stderr), args[1:])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var info mesh.PolicyInfo
	if err := adminGetJSON(ctx, target, "/v1/policy", &info); err != nil {
		return err
	}
	if info.Version == 0 {
		fmt.Fprintf(stdout, "%s runs no policy\n", info.Node)
	} else {
		fmt.Fprintf(stdout, "%s runs policy version %d, signed by %s at %s (%s), services: %s\n", info.Node, info.Version,
			info.Signer, info.SignedAt.UTC().Format(time.RFC3339), info.Source, dash(strings.Join(info.Services, ",")))
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "NODE\tPOOL\tROLE\tREGION\tVERSION\t")
	behind := 0
	for _, m := range info.Nodes {
		mark := ""
		if m.Version < info.Version {
			mark, behind = "behind", behind+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", m.Name, m.Pool, m.Role, dash(m.Region), m.Version, mark)
	}
	if behind > 0 {
		tw.Flush()
		return fmt.Errorf("%d of %d nodes do not run version %d yet", behind, len(info.Nodes), info.Version)
	}
	return nil
}

// cmdCheck: meshd check policy FILE.
func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "policy" {
		return cmdPreflight(ctx, args, stdout, stderr)
	}
	if len(args) != 2 {
		return fmt.Errorf("%w: meshd check policy FILE", errUsage)
	}
	doc, name, err := readPolicyFile(args[1])
	if err != nil {
		return err
	}
	d, err := policy.Parse(name, doc)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: valid, %d services, %d public domains\n", name, len(d.Services), len(d.Domains))
	return nil
}

// errCheckFailed is what `meshd check` returns after a fail line: the
// lines say why, so main only sets the exit status.
var errCheckFailed = errors.New("check failed")

// cmdPreflight is `meshd check [--config FILE | flags of run]`: one line
// per finding, exit status 1 when any is a fail.
func cmdPreflight(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, _, err := loadRunConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
		return err
	}
	var fs []mesh.Finding
	if err != nil {
		fs = []mesh.Finding{{Level: mesh.CheckFail, Check: "config", Detail: err.Error()}}
	} else {
		fs = mesh.Check(ctx, cfg, mesh.CheckOptions{})
	}
	failed := 0
	for _, f := range fs {
		fmt.Fprintln(stdout, f)
		if f.Level == mesh.CheckFail {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d", errCheckFailed, failed, len(fs))
	}
	return nil
}
