package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The admin API listens, by default, on a unix socket per node in
// AdminDir, named after the node (as tailscaled does with its socket):
// several nodes on one host never collide on a TCP port, the socket's file
// mode (0600, in a 0700 directory) keeps other users of the host out of an
// API that can purge the cache, and `meshd members --node NAME` finds a
// node by its name.

// AdminDirEnv names the environment variable that overrides AdminDir.
const AdminDirEnv = "MESHD_ADMIN_DIR"

// AdminDir is the directory of the nodes' admin sockets: $MESHD_ADMIN_DIR
// when set; /run/meshd for root; $XDG_RUNTIME_DIR/meshd when set (a
// per-user directory systemd makes); else meshd-UID in the temporary
// directory.
func AdminDir() string {
	if d := os.Getenv(AdminDirEnv); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/run/meshd"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "meshd")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("meshd-%d", os.Geteuid()))
}

// AdminSocket is the default admin address of the node called name:
// "unix:" and the socket's path in AdminDir.
func AdminSocket(name string) string {
	return "unix:" + filepath.Join(AdminDir(), name+".sock")
}

// adminNetwork splits an admin address into a network and an address for
// net.Listen or net.Dial: "unix:PATH" is a unix socket, anything else
// "host:port" over TCP.
func adminNetwork(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", p
	}
	return "tcp", addr
}

// validAdmin checks the admin field: unix:ABSOLUTE-PATH or host:port.
func validAdmin(addr string) error {
	network, a := adminNetwork(addr)
	if network == "tcp" {
		return validHostPort(a)
	}
	if !filepath.IsAbs(a) {
		return fmt.Errorf("%q: the socket path must be absolute", addr)
	}
	// sun_path holds 108 bytes with its terminating NUL on Linux.
	if len(a) > 107 {
		return fmt.Errorf("%q: a unix socket path is at most 107 bytes", addr)
	}
	return nil
}

// listenAdmin opens the admin listener. For a unix socket it makes the
// directory (0700, and refuses one that other users can write to), removes
// a socket left by a node that died, refuses to take one that a running
// node answers on, and makes the socket 0600.
func listenAdmin(addr string) (net.Listener, error) {
	network, a := adminNetwork(addr)
	if network == "tcp" {
		return net.Listen("tcp", a)
	}
	dir := filepath.Dir(a)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	} else if st, ok := fi.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0) {
		// Anybody who can write there could put their own socket in the
		// node's place and read what the CLI sends to it.
		return nil, fmt.Errorf("admin socket directory %s is not this user's alone (owner uid %d, mode %v)", dir, st.Uid, fi.Mode().Perm())
	}
	if fi, err := os.Lstat(a); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s exists and is not a socket", a)
		}
		c, err := net.DialTimeout("unix", a, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use: is a node of this name already running? (give each node its own --name, or --admin)", a)
		}
		// Nobody answers: a node that died left it behind.
		if err := os.Remove(a); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", a)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(a, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

// AdminTarget is the admin API a command talks to.
type AdminTarget struct {
	// Label names it in messages: the address, or the node's name.
	Label string
	// Client reaches it; URLs are "http://meshd" + path for a socket.
	Client *http.Client
	// Base is the URL prefix of the API, e.g. "http://127.0.0.1:9901".
	Base string
}

// DefaultAdminTCP is what a command asks when no node has a socket here:
// the admin address of `meshd demo`'s edge.
const DefaultAdminTCP = "127.0.0.1:9901"

// FindAdmin picks the admin API a command asks: admin when given (unix:PATH
// or host:port); else the socket of node; else the only node with a socket
// in AdminDir; else DefaultAdminTCP. Several nodes and no choice is an
// error that names them.
func FindAdmin(admin, node string) (*AdminTarget, error) {
	if admin != "" {
		if err := validAdmin(admin); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
		return adminTarget(admin, admin), nil
	}
	names := AdminNodes()
	if node != "" {
		for _, n := range names {
			if n == node {
				return adminTarget(AdminSocket(node), node), nil
			}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("no node named %q runs here: %s has no admin socket", node, AdminDir())
		}
		return nil, fmt.Errorf("no node named %q runs here; nodes with an admin socket in %s: %s", node, AdminDir(), strings.Join(names, ", "))
	}
	switch len(names) {
	case 0:
		return adminTarget(DefaultAdminTCP, DefaultAdminTCP), nil
	case 1:
		return adminTarget(AdminSocket(names[0]), names[0]), nil
	}
	return nil, fmt.Errorf("several nodes run here (%s): pick one with --node NAME", strings.Join(names, ", "))
}

// AdminNodes lists the names of the nodes with an admin socket in
// AdminDir, sorted.
func AdminNodes() []string {
	ents, err := os.ReadDir(AdminDir())
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".sock")
		if ok && e.Type()&os.ModeSocket != 0 {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func adminTarget(addr, label string) *AdminTarget {
	network, a := adminNetwork(addr)
	if network == "tcp" {
		return &AdminTarget{Label: label, Client: http.DefaultClient, Base: "http://" + a}
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", a)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: nobody answers on the socket (did the node stop?): %w", a, err)
		}
		return c, err
	}}
	return &AdminTarget{Label: label, Client: &http.Client{Transport: tr}, Base: "http://meshd"}
}
