package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lookPathOrSkip finds a program the test needs: skips without it, or fails
// where CI is "true" (CI has to install it: apt-get install unbound dnsutils).
func lookPathOrSkip(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (apt-get install %s)", name, pkg)
		}
		t.Skipf("%s not installed; apt-get install %s", name, pkg)
	}
	return p
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// dnsQuery builds a 28-byte DNS query (RFC 1035 §4.1) for name's A record.
func dnsQuery(id uint16, name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = append(b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; QDCOUNT 1
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	return append(b, 0, 0, 1, 0, 1) // root, QTYPE A, QCLASS IN
}

// dnsAnswerA checks that resp answers query q with NOERROR and returns the
// first A record's address.
func dnsAnswerA(q, resp []byte) (net.IP, error) {
	if len(resp) < len(q) || !bytes.Equal(resp[:2], q[:2]) {
		return nil, errors.New("not the answer to this query")
	}
	if resp[2]&0x80 == 0 || resp[3]&0x0f != 0 {
		return nil, fmt.Errorf("flags %#x %#x: not a NOERROR response", resp[2], resp[3])
	}
	if an := binary.BigEndian.Uint16(resp[6:]); an == 0 {
		return nil, errors.New("no answer")
	}
	if !bytes.Equal(resp[12:len(q)], q[12:]) {
		return nil, errors.New("question differs")
	}
	rr := resp[len(q):]
	// NAME (a pointer, or the name in full), TYPE, CLASS, TTL, RDLENGTH, RDATA
	switch {
	case len(rr) >= 2 && rr[0]&0xc0 == 0xc0:
		rr = rr[2:]
	default:
		rr = rr[len(q)-12-4:]
	}
	if len(rr) < 14 || binary.BigEndian.Uint16(rr) != 1 || binary.BigEndian.Uint16(rr[8:]) != 4 {
		return nil, fmt.Errorf("first answer is not an A record: %x", rr)
	}
	return net.IP(rr[10:14]), nil
}

// startUnbound runs unbound in the foreground with a local zone that answers
// meshd.test. A 192.0.2.7, and waits until it answers. It is stopped (by
// its PID) when the test ends.
func startUnbound(t *testing.T) string {
	t.Helper()
	bin := lookPathOrSkip(t, "unbound", "unbound")
	dir := t.TempDir()
	port := freeUDPPort(t)
	cfg := fmt.Sprintf(`server:
	interface: 127.0.0.1
	port: %d
	do-ip6: no
	do-tcp: no
	do-daemonize: no
	chroot: ""
	username: ""
	pidfile: ""
	directory: %q
	use-syslog: no
	logfile: ""
	verbosity: 1
	num-threads: 1
	module-config: "iterator"
	access-control: 127.0.0.0/8 allow
	local-zone: "meshd.test." static
	local-data: "meshd.test. 300 IN A 192.0.2.7"
remote-control:
	control-enable: no
`, port, dir)
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	cmd := exec.Command(bin, "-d", "-c", path)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("unbound (pid %d) log:\n%s", cmd.Process.Pid, logs.String())
		}
	})

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 512)
	deadline := time.Now().Add(10 * time.Second)
	for id := uint16(1); ; id++ {
		select {
		case <-exited:
			t.Fatalf("unbound exited: %v\n%s", cmd.ProcessState, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound did not answer on %s within 10 s\n%s", addr, logs.String())
		}
		q := dnsQuery(id, "meshd.test.")
		c.Write(q)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		for err == nil && n >= 2 && !bytes.Equal(buf[:2], q[:2]) {
			n, err = c.Read(buf) // a late answer to an earlier attempt
		}
		if err != nil {
			time.Sleep(20 * time.Millisecond) // not up yet (or refused)
			continue
		}
		if ip, err := dnsAnswerA(q, buf[:n]); err != nil || !ip.Equal(net.IPv4(192, 0, 2, 7)) {
			t.Fatalf("unbound answered %v, %v", ip, err)
		}
		return addr
	}
}

// TestUDPUnboundThroughTunnel: DNS queries from dig, and 1,000 built here,
// go through UDPForwarder → net.Pipe → RelayUDP to a real unbound, and
// every one is answered.
func TestUDPUnboundThroughTunnel(t *testing.T) {
	dig := lookPathOrSkip(t, "dig", "dnsutils")
	r := &relays{target: startUnbound(t), idle: 30 * time.Second}
	f := &UDPForwarder{Open: r.open, IdleTimeout: 30 * time.Second}
	addr, stop := serveUDP(t, f)
	port := fmt.Sprint(addr.Port)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, dig, "@127.0.0.1", "-p", port, "meshd.test", "A", "+short", "+tries=1", "+time=2").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "192.0.2.7" {
		t.Fatalf("dig: %v\n%s", err, out)
	}

	// dig -f: 200 queries, each from a new random source port, so (almost
	// always) a flow each.
	const digN = 200
	var batch strings.Builder
	for range digN {
		fmt.Fprintf(&batch, "@127.0.0.1 -p %s meshd.test A +short +tries=1 +time=2\n", port)
	}
	bpath := filepath.Join(t.TempDir(), "batch")
	if err := os.WriteFile(bpath, []byte(batch.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err = exec.CommandContext(ctx, dig, "-f", bpath).CombinedOutput()
	if err != nil {
		t.Fatalf("dig -f: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	good := 0
	for _, l := range lines {
		if l == "192.0.2.7" {
			good++
		}
	}
	if good != digN || len(lines) != digN {
		t.Fatalf("dig -f: %d of %d answered, output:\n%s", good, digN, out)
	}
	t.Logf("dig -f: %d of %d answered in %v", good, digN, time.Since(start).Round(time.Millisecond))

	// 1,000 queries built here, from 4 clients at once, 16 outstanding each.
	start = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		c := udpClient(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- dnsClient(c, addr, uint16(i)<<12, 250, 16, time.Now().Add(10*time.Second))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("1000 queries from 4 clients in %v", time.Since(start).Round(time.Millisecond))

	const total = 1 + digN + 1000
	waitFor(t, "counters", 2*time.Second, func() bool { return f.Stats().DatagramsDown == total })
	st := f.Stats()
	t.Logf("forwarder: %+v", st)
	// A flow per source port: dig's ports are random, and two of its 200
	// queries may share one (the same flow, if it is still open).
	if st.DatagramsUp != total || st.Flows < 5 || st.Flows > 1+digN+4 {
		t.Errorf("stats %+v: want %d datagrams up, 5 to %d flows", st, total, 1+digN+4)
	}
	if d := st.DroppedTooBig + st.DroppedQueueFull + st.DroppedTooManyFlows + st.DroppedBadContext + st.DroppedFlowClosed + st.DroppedSendError; d != 0 {
		t.Errorf("%d dropped", d)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "relays to return", 5*time.Second, func() bool { return r.done() == int(st.Flows) })
	rst, rerrs := r.total()
	for _, err := range rerrs {
		if err != nil {
			t.Errorf("relay: %v", err)
		}
	}
	if rst.DatagramsUp != total || rst.DatagramsDown != total {
		t.Errorf("relays: %+v, want %d each way", rst, total)
	}
}

// dnsClient sends n A queries for meshd.test. with IDs base, base+1, … from
// c, window outstanding, and checks every one is answered with 192.0.2.7.
func dnsClient(c *net.UDPConn, addr *net.UDPAddr, base uint16, n, window int, deadline time.Time) error {
	tokens := make(chan struct{}, window)
	for range window {
		tokens <- struct{}{}
	}
	sendErr := make(chan error, 1)
	go func() {
		for i := range n {
			select {
			case <-tokens:
			case <-time.After(time.Until(deadline)):
				sendErr <- fmt.Errorf("no window for query %d", i)
				return
			}
			if _, err := c.WriteToUDP(dnsQuery(base+uint16(i), "meshd.test."), addr); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	seen := make([]bool, n)
	buf := make([]byte, 512)
	c.SetReadDeadline(deadline)
	for got := 0; got < n; got++ {
		m, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("client %#x: %d of %d answered: %v", base, got, n, err)
		}
		if m < 2 {
			return fmt.Errorf("client %#x: %d-byte answer", base, m)
		}
		i := int(binary.BigEndian.Uint16(buf) - base)
		if i < 0 || i >= n || seen[i] {
			return fmt.Errorf("client %#x: unexpected or repeated answer ID %#x", base, binary.BigEndian.Uint16(buf))
		}
		ip, err := dnsAnswerA(dnsQuery(base+uint16(i), "meshd.test."), buf[:m])
		if err != nil || !ip.Equal(net.IPv4(192, 0, 2, 7)) {
			return fmt.Errorf("client %#x: answer %d: %v %v", base, i, ip, err)
		}
		seen[i] = true
		tokens <- struct{}{}
	}
	return <-sendErr
}
