package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/tlsmgr"
)

// cmdCARotate: meshd ca rotate begin|switch|finish --dir DIR.
func cmdCARotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: meshd ca rotate begin|switch|finish --dir DIR [--admin A[,B...]]", errUsage)
	}
	steps := map[string]func(string) (*tlsmgr.Rotation, error){
		"begin": tlsmgr.RotateBegin, "switch": tlsmgr.RotateSwitch, "finish": tlsmgr.RotateFinish,
	}
	step, ok := steps[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown rotation step %q (want begin, switch or finish)", errUsage, args[0])
	}
	fs := newFlagSet("meshd ca rotate "+args[0], stderr)
	dir := fs.String("dir", "", "the CA directory (with ca.key) whose root to rotate")
	admin := fs.String("admin", "", "before the step, check with these nodes' admin APIs (A[,B...]) that every node has taken the step before it, as `meshd ca status --dir` does, and refuse if not")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: ca rotate %s needs --dir", errUsage, args[0])
	}
	if *admin != "" {
		var report strings.Builder
		if err := caStatus(ctx, *dir, *admin, "", &report); err != nil {
			fmt.Fprint(stdout, report.String())
			return fmt.Errorf("ca rotate %s: refused, the step before has not reached every node: %w", args[0], err)
		}
	}
	r, err := step(*dir)
	if err != nil {
		return fmt.Errorf("ca rotate %s: %w", args[0], err)
	}
	switch args[0] {
	case "begin":
		fmt.Fprintf(stdout, "new root %s beside %s: %s/ca.crt holds both, SVIDs still come from %s\n",
			tlsmgr.Fingerprint(r.Next), tlsmgr.Fingerprint(r.CA.Cert), *dir, tlsmgr.Fingerprint(r.CA.Cert))
		fmt.Fprintf(stdout, "copy ca.crt to every node's --ca-dir; when `meshd ca status --dir %s` exits 0, run `meshd ca rotate switch`\n", *dir)
	case "switch":
		fmt.Fprintf(stdout, "root %s issues now (%s still trusted); operator.crt re-issued from it\n",
			tlsmgr.Fingerprint(r.CA.Cert), tlsmgr.Fingerprint(r.Prev))
		fmt.Fprintf(stdout, "copy ca.key to the nodes that mint, re-issue file-mode SVIDs (meshd ca issue) and re-apply the policy (meshd apply); when `meshd ca status --dir %s` exits 0, run `meshd ca rotate finish`\n", *dir)
	case "finish":
		fmt.Fprintf(stdout, "old root dropped: %s/ca.crt holds %s only\n", *dir, strings.Join(tlsmgr.Fingerprints(r.CA.Roots), ","))
		fmt.Fprintf(stdout, "copy ca.crt to every node; `meshd ca status --dir %s` exits 0 when every node has dropped the old root\n", *dir)
	}
	return nil
}

// cmdCAStatus: meshd ca status [--dir DIR] [--admin A[,B...] | --node NAME].
func cmdCAStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("meshd ca status", stderr)
	admin, node := adminFlags(fs)
	dir := fs.String("dir", "", "the CA directory of the rotation: every node should trust its ca.crt and, with its ca.key, have an SVID from that root (default: what the asked node itself runs)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return caStatus(ctx, *dir, *admin, *node, stdout)
}

// caStatus prints where each node of the admin APIs asked is in the
// rotation of dir (or, dir empty, of the first node asked) and returns an
// error unless every node is at that step.
func caStatus(ctx context.Context, dir, admin, node string, stdout io.Writer) error {
	var views []mesh.CAView
	for _, a := range strings.Split(admin, ",") {
		target, err := mesh.FindAdmin(strings.TrimSpace(a), node)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var v mesh.CAView
		err = adminGetJSON(ctx, target, "/v1/ca", &v)
		cancel()
		if err != nil {
			return err
		}
		views = append(views, v)
	}
	target := mesh.CATarget{Roots: views[0].Self.Roots, Issuing: views[0].Self.SVIDRoot, From: "node " + views[0].Self.Name}
	if dir != "" {
		ca, err := tlsmgr.LoadCA(dir)
		if err != nil {
			return fmt.Errorf("ca status: %w", err)
		}
		target = mesh.CATarget{Roots: tlsmgr.Fingerprints(ca.Roots), From: dir}
		if ca.Key != nil {
			target.Issuing = tlsmgr.Fingerprint(ca.Cert)
		}
	}
	issuing := target.Issuing
	if issuing == "" {
		issuing = "(not compared: no ca.key)"
	}
	fmt.Fprintf(stdout, "latest step (from %s): trust %s, SVIDs from %s\n", target.From, strings.Join(target.Roots, ","), issuing)
	lines, refused, ok := mesh.CAStatus(views, target)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPOOL\tROLE\tREGION\tTRUSTS\tSVID ROOT\t")
	behind := 0
	for _, l := range lines {
		mark := ""
		if l.Behind != "" {
			mark, behind = "behind: "+l.Behind, behind+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, l.Pool, l.Role, dash(l.Region), dash(strings.Join(l.Roots, ",")), dash(l.SVIDRoot), mark)
	}
	tw.Flush()
	for _, r := range refused {
		fmt.Fprintf(stdout, "refused record of %s (%s pool): %s\n", r.Name, r.Pool, r.Reason)
	}
	if !ok {
		return fmt.Errorf("not every node is on the latest step: %d of %d behind, %d refused", behind, len(lines), len(refused))
	}
	return nil
}
