package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
)

// cmdGossip is `meshd gossip keyring list|install|use|remove`: one step of
// a gossip key rotation on each node given (--admin A,B,C or --node), in
// order, stopping at the first node that refuses.
func cmdGossip(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 2 || args[0] != "keyring" {
		return fmt.Errorf("%w: meshd gossip keyring list|install|use|remove", errUsage)
	}
	op := args[1]
	fs := newFlagSet("meshd gossip keyring "+op, stderr)
	admin, node := adminFlags(fs)
	keyB64 := fs.String("key", "", "the key, standard base64 of 16, 24 or 32 bytes (install without it makes a new one)")
	keyFile := fs.String("key-file", "", "read the key from this file (as gossip.key)")
	if err := parseFlags(fs, args[2:]); err != nil {
		return err
	}
	switch op {
	case "list", "install", "use", "remove":
	default:
		return fmt.Errorf("%w: unknown keyring step %q (want list, install, use or remove)", errUsage, op)
	}
	key := strings.TrimSpace(*keyB64)
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("key-file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	if op == "install" && key == "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		key = base64.StdEncoding.EncodeToString(b)
		fmt.Fprintf(stdout, "new key (keep it secret; install it on every node, then use it): %s\n", key)
	}
	if op != "list" && key == "" {
		return fmt.Errorf("%w: %s needs --key or --key-file", errUsage, op)
	}
	targets := []string{*admin}
	if strings.Contains(*admin, ",") {
		targets = strings.Split(*admin, ",")
	}
	for _, a := range targets {
		target, err := mesh.FindAdmin(strings.TrimSpace(a), *node)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var info mesh.KeyringInfo
		if op == "list" {
			err = adminGetJSON(ctx, target, "/v1/gossip/keyring", &info)
		} else {
			body, _ := json.Marshal(mesh.KeyringOp{Op: op, Key: key})
			err = adminPostJSON(ctx, target, "/v1/gossip/keyring", body, "keyring "+op, &info)
		}
		cancel()
		if err != nil {
			return err
		}
		pools := make([]string, 0, len(info.Pools))
		for p := range info.Pools {
			pools = append(pools, p)
		}
		sort.Strings(pools)
		for _, p := range pools {
			pk := info.Pools[p]
			fmt.Fprintf(stdout, "%s %s pool: in use %s, accepted %s\n", info.Node, p, pk.Primary, strings.Join(pk.Keys, " "))
		}
	}
	return nil
}
