package proxy

// Capsules (RFC 9297 §3.2) on a reliable byte stream: the HTTP/2 and
// HTTP/1.1 carriage of HTTP Datagrams (§3.5) that CONNECT-UDP (RFC 9298)
// uses when the hop has no QUIC DATAGRAM frames.
//
//	Capsule {
//	  Capsule Type (i),
//	  Capsule Length (i),
//	  Capsule Value (..),
//	}
//
//	DATAGRAM Capsule {
//	  Capsule Type (i) = 0x00,
//	  Capsule Length (i),
//	  Context ID (i),          // RFC 9298 §5: 0 = UDP payload
//	  UDP Payload (..),
//	}
//
// Integers are QUIC variable-length integers (RFC 9000 §16).

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

const (
	// capsuleDatagram is the DATAGRAM capsule type (RFC 9297 §3.5).
	capsuleDatagram uint64 = 0x00

	// maxUDPPayload is the largest UDP payload meshd carries: 65535 minus
	// the 8-byte UDP header. Longer payloads are dropped, never fragmented.
	maxUDPPayload = 65527

	// maxCapsuleLen bounds a capsule's value length, for every type: a
	// DATAGRAM of maxUDPPayload bytes with its context ID fits with room to
	// spare. A longer capsule is a protocol error and the stream is closed,
	// so a peer cannot make a hop buffer (or discard) without bound.
	maxCapsuleLen = 65535 + 16

	// maxVarint is the largest value a QUIC varint holds (2^62-1).
	maxVarint = 1<<62 - 1
)

var (
	errCapsuleTooLarge = errors.New("proxy: capsule longer than the limit")
	errVarintRange     = errors.New("proxy: varint value out of range")
)

// varintLen is the encoded length of v: 1, 2, 4 or 8 bytes.
func varintLen(v uint64) int {
	switch {
	case v <= 63:
		return 1
	case v <= 16383:
		return 2
	case v <= 1073741823:
		return 4
	default:
		return 8
	}
}

// appendVarint appends v in the shortest encoding (RFC 9000 §16). It
// panics if v > 2^62-1: every caller passes a type or a length it chose.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v <= 63:
		return append(b, byte(v))
	case v <= 16383:
		return append(b, 0x40|byte(v>>8), byte(v))
	case v <= 1073741823:
		return append(b, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	case v <= maxVarint:
		return append(b, 0xc0|byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	panic(errVarintRange)
}

// parseVarint decodes the varint at the start of b and returns it with its
// length; n is 0 if b is too short.
func parseVarint(b []byte) (v uint64, n int) {
	if len(b) == 0 {
		return 0, 0
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n
}

// readVarint reads one varint. A stream that ends inside it gives
// io.ErrUnexpectedEOF; one that ends before it gives io.EOF.
func readVarint(br io.ByteReader) (uint64, error) {
	c, err := br.ReadByte()
	if err != nil {
		return 0, err
	}
	n := 1 << (c >> 6)
	v := uint64(c & 0x3f)
	for i := 1; i < n; i++ {
		c, err = br.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// appendCapsule appends one capsule of type typ carrying payload.
func appendCapsule(b []byte, typ uint64, payload []byte) []byte {
	b = appendVarint(b, typ)
	b = appendVarint(b, uint64(len(payload)))
	return append(b, payload...)
}

// appendDatagram appends a DATAGRAM capsule with context ID 0 carrying one
// UDP payload (RFC 9298 §5), without an intermediate copy.
func appendDatagram(b []byte, udpPayload []byte) []byte {
	b = appendVarint(b, capsuleDatagram)
	b = appendVarint(b, uint64(1+len(udpPayload)))
	b = append(b, 0) // context ID 0
	return append(b, udpPayload...)
}

// readCapsule reads the next capsule of a type meshd knows (so far only
// DATAGRAM) and returns its type and value. Capsules of unknown types are
// read and discarded (RFC 9297 §3.2: they MUST be ignored). The value is
// read into buf when it fits (give it maxCapsuleLen bytes of capacity to
// read without allocating) and is valid until the next call. A capsule
// longer than maxCapsuleLen, of any type, gives errCapsuleTooLarge; the
// caller closes the stream. A stream that ends between capsules gives
// io.EOF, inside one io.ErrUnexpectedEOF.
func readCapsule(br *bufio.Reader, buf []byte) (typ uint64, payload []byte, err error) {
	for {
		typ, err = readVarint(br)
		if err != nil {
			return 0, nil, err
		}
		n, err := readVarint(br)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		if n > maxCapsuleLen {
			return 0, nil, fmt.Errorf("%w: type %#x, %d bytes", errCapsuleTooLarge, typ, n)
		}
		if typ != capsuleDatagram {
			if _, err := br.Discard(int(n)); err != nil {
				return 0, nil, unexpected(err)
			}
			continue
		}
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		payload = buf[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return 0, nil, unexpected(err)
		}
		return typ, payload, nil
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

var errDatagramMalformed = errors.New("proxy: DATAGRAM capsule without a whole context ID")

// parseDatagram splits a DATAGRAM capsule's value into its context ID and
// the rest. A value too short for its context ID is malformed (RFC 9297
// §3.5); the caller closes the stream.
func parseDatagram(value []byte) (contextID uint64, data []byte, err error) {
	id, n := parseVarint(value)
	if n == 0 {
		return 0, nil, errDatagramMalformed
	}
	return id, value[n:], nil
}
