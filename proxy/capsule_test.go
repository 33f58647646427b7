package proxy

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

// TestCapsuleVarintRFC9000 decodes the examples of RFC 9000 §A.1 and
// re-encodes their values in the shortest form.
func TestCapsuleVarintRFC9000(t *testing.T) {
	for _, tt := range []struct {
		hex     string
		v       uint64
		minimal bool
	}{
		{"c2197c5eff14e88c", 151288809941952652, true},
		{"9d7f3e7d", 494878333, true},
		{"7bbd", 15293, true},
		{"25", 37, true},
		{"4025", 37, false}, // the two-byte encoding of 37, also valid
	} {
		b, _ := hex.DecodeString(tt.hex)
		v, n := parseVarint(b)
		if v != tt.v || n != len(b) {
			t.Errorf("parseVarint(%s) = %d, %d; want %d, %d", tt.hex, v, n, tt.v, len(b))
		}
		rv, err := readVarint(bytes.NewReader(b))
		if err != nil || rv != tt.v {
			t.Errorf("readVarint(%s) = %d, %v", tt.hex, rv, err)
		}
		if tt.minimal {
			if got := hex.EncodeToString(appendVarint(nil, tt.v)); got != tt.hex {
				t.Errorf("appendVarint(%d) = %s, want %s", tt.v, got, tt.hex)
			}
		}
		if _, n := parseVarint(b[:len(b)-1]); len(b) > 1 && n != 0 {
			t.Errorf("parseVarint(%s truncated) accepted %d bytes", tt.hex, n)
		}
	}
}

// TestCapsuleVarintBoundaries encodes and decodes every value at the edge of
// an encoding length.
func TestCapsuleVarintBoundaries(t *testing.T) {
	for _, tt := range []struct {
		v   uint64
		len int
	}{
		{0, 1}, {63, 1}, {64, 2}, {16383, 2}, {16384, 4},
		{1<<30 - 1, 4}, {1 << 30, 8}, {maxVarint, 8},
	} {
		b := appendVarint(nil, tt.v)
		if len(b) != tt.len || varintLen(tt.v) != tt.len {
			t.Errorf("%d: encoded in %d bytes (varintLen %d), want %d", tt.v, len(b), varintLen(tt.v), tt.len)
		}
		v, n := parseVarint(b)
		if v != tt.v || n != tt.len {
			t.Errorf("%d: parsed %d, %d", tt.v, v, n)
		}
		rv, err := readVarint(bytes.NewReader(b))
		if err != nil || rv != tt.v {
			t.Errorf("%d: readVarint %d, %v", tt.v, rv, err)
		}
		if tt.len > 1 {
			if _, err := readVarint(bytes.NewReader(b[:tt.len-1])); err != io.ErrUnexpectedEOF {
				t.Errorf("%d truncated: readVarint err %v, want io.ErrUnexpectedEOF", tt.v, err)
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("appendVarint(2^62) did not panic")
		}
	}()
	appendVarint(nil, maxVarint+1)
}

func TestCapsuleRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 62, 63, 64, 16382, 16383, 16384, maxUDPPayload}
	var wire []byte
	for _, n := range sizes {
		wire = appendDatagram(wire, bytes.Repeat([]byte{byte(n)}, n))
	}
	// appendCapsule with a hand-built context ID gives the same bytes.
	if got, want := appendCapsule(nil, capsuleDatagram, []byte{0, 'x'}), appendDatagram(nil, []byte("x")); !bytes.Equal(got, want) {
		t.Fatalf("appendCapsule %x != appendDatagram %x", got, want)
	}
	br := bufio.NewReader(bytes.NewReader(wire))
	buf := make([]byte, maxCapsuleLen)
	for _, n := range sizes {
		typ, v, err := readCapsule(br, buf)
		if err != nil || typ != capsuleDatagram {
			t.Fatalf("size %d: typ %d err %v", n, typ, err)
		}
		id, data, err := parseDatagram(v)
		if err != nil || id != 0 || len(data) != n || (n > 0 && data[n-1] != byte(n)) {
			t.Fatalf("size %d: context %d, %d bytes, err %v", n, id, len(data), err)
		}
	}
	if _, _, err := readCapsule(br, buf); err != io.EOF {
		t.Fatalf("after the last capsule: %v, want io.EOF", err)
	}
}

// TestCapsuleUnknownSkipped: capsules of unknown types, including the
// reserved greasing types 0x29*N+0x17 (RFC 9297 §5.4), are skipped.
func TestCapsuleUnknownSkipped(t *testing.T) {
	var wire []byte
	wire = appendCapsule(wire, 0x17, []byte("grease"))
	wire = appendCapsule(wire, 0x29*1000+0x17, make([]byte, 20000))
	wire = appendCapsule(wire, maxVarint, nil)
	wire = appendDatagram(wire, []byte("one"))
	wire = appendCapsule(wire, 0x01, []byte{0})
	wire = appendCapsule(wire, capsuleDatagram, append(appendVarint(nil, 7), "ctx7"...))
	br := bufio.NewReader(bytes.NewReader(wire))
	_, v, err := readCapsule(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, data, _ := parseDatagram(v); id != 0 || string(data) != "one" {
		t.Fatalf("first datagram: context %d %q", id, data)
	}
	_, v, err = readCapsule(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, data, _ := parseDatagram(v); id != 7 || string(data) != "ctx7" {
		t.Fatalf("second datagram: context %d %q", id, data)
	}
	if _, _, err := readCapsule(br, nil); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

func TestCapsuleOversizeRefused(t *testing.T) {
	for _, typ := range []uint64{capsuleDatagram, 0x2a} {
		wire := appendVarint(appendVarint(nil, typ), maxCapsuleLen+1)
		wire = append(wire, make([]byte, 100)...) // the rest is never read
		_, _, err := readCapsule(bufio.NewReader(bytes.NewReader(wire)), nil)
		if !errors.Is(err, errCapsuleTooLarge) {
			t.Errorf("type %#x: err %v, want errCapsuleTooLarge", typ, err)
		}
	}
	// Exactly the limit is accepted.
	wire := appendCapsule(nil, capsuleDatagram, make([]byte, maxCapsuleLen))
	if _, v, err := readCapsule(bufio.NewReader(bytes.NewReader(wire)), nil); err != nil || len(v) != maxCapsuleLen {
		t.Fatalf("capsule at the limit: %d bytes, %v", len(v), err)
	}
}

func TestCapsuleTruncated(t *testing.T) {
	wire := appendDatagram(nil, []byte("hello"))
	for i := 1; i < len(wire); i++ {
		_, _, err := readCapsule(bufio.NewReader(bytes.NewReader(wire[:i])), nil)
		if err != io.ErrUnexpectedEOF {
			t.Errorf("cut at %d: %v, want io.ErrUnexpectedEOF", i, err)
		}
	}
	if _, _, err := parseDatagram(nil); err == nil {
		t.Error("empty DATAGRAM value accepted")
	}
	if _, _, err := parseDatagram([]byte{0x40}); err == nil {
		t.Error("DATAGRAM value with half a context ID accepted")
	}
}

// FuzzCapsule: readCapsule never panics, never returns a value longer than
// the limit, and consumes the stream or stops with an error.
func FuzzCapsule(f *testing.F) {
	f.Add(appendDatagram(nil, []byte("hello")))
	f.Add(appendCapsule(appendCapsule(nil, 0x17, []byte("x")), 0, []byte{0x40, 1, 2}))
	f.Add(appendVarint(appendVarint(nil, 0), maxCapsuleLen+1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0})
	f.Fuzz(func(t *testing.T, wire []byte) {
		br := bufio.NewReader(bytes.NewReader(wire))
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			if i > len(wire) {
				t.Fatalf("more capsules than input bytes")
			}
			typ, v, err := readCapsule(br, buf)
			if err != nil {
				return
			}
			if typ != capsuleDatagram || len(v) > maxCapsuleLen {
				t.Fatalf("type %#x, %d bytes", typ, len(v))
			}
			_, data, err := parseDatagram(v)
			if err == nil && len(data) >= len(v) {
				t.Fatalf("datagram data %d bytes of a %d-byte value", len(data), len(v))
			}
		}
	})
}
