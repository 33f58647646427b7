package pebbletest

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"
)

// dnsServer answers every A query with 127.0.0.1 and every other query with
// no records, on a UDP socket at 127.0.0.1:0, and records the names asked.
type dnsServer struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func serveDNS(t testing.TB) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			name, resp, ok := dnsAnswer(buf[:n])
			if !ok {
				continue
			}
			s.mu.Lock()
			s.seen = append(s.seen, name)
			s.mu.Unlock()
			pc.WriteTo(resp, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return s
}

func (s *dnsServer) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// dnsAnswer parses a one-question query (RFC 1035 §4.1.1 header, §4.1.2
// question) and builds its answer: for QTYPE A one record, 127.0.0.1 with a
// TTL of 1 s, else none. Compressed names and other question counts are
// refused (ok false): Pebble's resolver sends neither.
func dnsAnswer(q []byte) (name string, resp []byte, ok bool) {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return "", nil, false
	}
	i := 12
	var labels []string
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l > 63 || i+1+l > len(q) {
			return "", nil, false
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return "", nil, false
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	question := q[12 : i+5]
	var b bytes.Buffer
	b.Write(q[:2])                                                  // ID
	flags := uint16(0x8480) | binary.BigEndian.Uint16(q[2:])&0x0100 // QR, AA, RA, copy RD
	binary.Write(&b, binary.BigEndian, flags)
	an := uint16(0)
	if qtype == 1 {
		an = 1
	}
	binary.Write(&b, binary.BigEndian, []uint16{1, an, 0, 0})
	b.Write(question)
	if an == 1 {
		// Name pointer to the question (offset 12), A, IN, TTL 1 s, 127.0.0.1.
		b.Write([]byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1})
	}
	return strings.ToLower(strings.Join(labels, ".")), b.Bytes(), true
}
