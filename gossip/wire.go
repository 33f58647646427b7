package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Wire format of everything this package puts on memberlist's user channels.
//
// memberlist already authenticates and encrypts every packet and stream with
// the pool key (AES-GCM, the Label as additional data), so these encodings
// only have to be unambiguous and cheap to check, not secret. Every decoder
// below treats its input as hostile: lengths are checked against the bytes
// left and against fixed limits before anything is allocated, trailing bytes
// are an error, and nothing panics.
//
//	message  = wireVersion kind body
//	record   = name version(8, big endian) uvarint(len) data      kind 1
//	want     = name(from) name(owner) version(8)                  kind 2
//	state    = uvarint(count) count*(name version uvarint(len) data) kind 3
//	note     = name(from) uvarint(len) data                       kind 4
//	name     = uvarint(len) bytes (1..MaxNameLen, valid UTF-8)
//	meta     = wireVersion version(8)                             (Node.Meta)
const (
	wireVersion byte = 1

	kindRecord byte = 1
	kindWant   byte = 2
	kindState  byte = 3
	kindNote   byte = 4

	// MaxRecordSize is the largest record SetRecord accepts (64 KiB).
	MaxRecordSize = 64 << 10
	// MaxNoteSize is the largest note Send accepts (512 KiB).
	MaxNoteSize = 512 << 10
	// MaxNameLen is the longest node name, in bytes.
	MaxNameLen = 255

	metaLen = 1 + 8

	// maxStateEncode bounds what LocalState sends in one push/pull, well
	// under memberlist's own 20 MiB limit for user state plus node list.
	maxStateEncode = 8 << 20
	// maxStateDecode is the largest push/pull user state we parse; it
	// equals memberlist's limit, so a peer with a bigger budget than ours
	// is still understood.
	maxStateDecode = 20 << 20
	// maxStateEntries bounds the count field so that a forged count cannot
	// make the decoder allocate before it has seen the bytes.
	maxStateEntries = 1 << 16
	// maxMessage is the largest single message: a full note plus header
	// and name (a record message is smaller).
	maxMessage = 2 + binary.MaxVarintLen64 + MaxNameLen + binary.MaxVarintLen64 + MaxNoteSize
)

var (
	errTruncated = errors.New("truncated")
	errTrailing  = errors.New("trailing bytes")
)

// entry is one node's record as carried on the wire.
type entry struct {
	Name    string
	Version uint64
	Data    []byte
}

// want asks the owner of a record to send it (From is the asker).
type want struct {
	From    string
	Name    string
	Version uint64 // the version the asker already has (0: none)
}

// note is data one member sent another with Send.
type note struct {
	From string
	Data []byte
}

// message is a decoded user message: exactly one of Record, Want or Note is
// set, according to Kind.
type message struct {
	Kind   byte
	Record entry
	Want   want
	Note   note
}

func appendName(b []byte, name string) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

func appendEntry(b []byte, e entry) []byte {
	b = appendName(b, e.Name)
	b = binary.BigEndian.AppendUint64(b, e.Version)
	b = binary.AppendUvarint(b, uint64(len(e.Data)))
	return append(b, e.Data...)
}

func entrySize(e entry) int {
	return 2*binary.MaxVarintLen64 + len(e.Name) + 8 + len(e.Data)
}

func encodeRecord(e entry) []byte {
	b := make([]byte, 0, 2+entrySize(e))
	b = append(b, wireVersion, kindRecord)
	return appendEntry(b, e)
}

func encodeWant(w want) []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(w.From)+len(w.Name)+8)
	b = append(b, wireVersion, kindWant)
	b = appendName(b, w.From)
	b = appendName(b, w.Name)
	return binary.BigEndian.AppendUint64(b, w.Version)
}

func encodeNote(n note) []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(n.From)+len(n.Data))
	b = append(b, wireVersion, kindNote)
	b = appendName(b, n.From)
	b = binary.AppendUvarint(b, uint64(len(n.Data)))
	return append(b, n.Data...)
}

// encodeState encodes entries in order until the next one would exceed
// budget bytes; the rest are left for a later push/pull.
func encodeState(entries []entry, budget int) []byte {
	body := make([]byte, 0, 1024)
	n := 0
	for _, e := range entries {
		if len(body)+entrySize(e) > budget {
			continue
		}
		body = appendEntry(body, e)
		n++
	}
	b := make([]byte, 0, 2+binary.MaxVarintLen64+len(body))
	b = append(b, wireVersion, kindState)
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, body...)
}

func encodeMeta(version uint64) []byte {
	b := make([]byte, 0, metaLen)
	b = append(b, wireVersion)
	return binary.BigEndian.AppendUint64(b, version)
}

// decodeMeta reads the record version a node advertises in Node.Meta.
// Empty meta means "no record yet".
func decodeMeta(b []byte) (uint64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) != metaLen {
		return 0, fmt.Errorf("meta: length %d, want %d", len(b), metaLen)
	}
	if b[0] != wireVersion {
		return 0, fmt.Errorf("meta: unknown wire version %d", b[0])
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}

// reader is a bounds-checked cursor; the first error sticks and every later
// read returns zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail(errTruncated)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errors.New("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail(errTruncated)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// bytes returns the next n bytes (a sub-slice, not a copy) after checking n
// against max and against what is left.
func (r *reader) bytes(what string, max int) []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(max) {
		r.fail(fmt.Errorf("%s: length %d exceeds %d", what, n, max))
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail(fmt.Errorf("%s: %w", what, errTruncated))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) name(what string) string {
	b := r.bytes(what, MaxNameLen)
	if r.err != nil {
		return ""
	}
	if err := checkName(string(b)); err != nil {
		r.fail(fmt.Errorf("%s: %w", what, err))
		return ""
	}
	return string(b)
}

func (r *reader) entry() entry {
	var e entry
	e.Name = r.name("name")
	e.Version = r.u64()
	e.Data = r.bytes("record", MaxRecordSize)
	if r.err == nil && e.Version == 0 {
		r.fail(errors.New("version 0"))
	}
	return e
}

func (r *reader) header(kinds ...byte) byte {
	v := r.byte()
	k := r.byte()
	if r.err != nil {
		return 0
	}
	if v != wireVersion {
		r.fail(fmt.Errorf("unknown wire version %d", v))
		return 0
	}
	for _, want := range kinds {
		if k == want {
			return k
		}
	}
	r.fail(fmt.Errorf("unknown message kind %d", k))
	return 0
}

// decodeMessage decodes a record, want or note message. Returned byte slices
// alias b.
func decodeMessage(b []byte) (message, error) {
	if len(b) > maxMessage {
		return message{}, fmt.Errorf("message: %d bytes exceeds %d", len(b), maxMessage)
	}
	r := reader{b: b}
	m := message{Kind: r.header(kindRecord, kindWant, kindNote)}
	switch m.Kind {
	case kindRecord:
		m.Record = r.entry()
	case kindWant:
		m.Want.From = r.name("from")
		m.Want.Name = r.name("name")
		m.Want.Version = r.u64()
	case kindNote:
		m.Note.From = r.name("from")
		m.Note.Data = r.bytes("note", MaxNoteSize)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(errTrailing)
	}
	if r.err != nil {
		return message{}, fmt.Errorf("message: %w", r.err)
	}
	return m, nil
}

// decodeState decodes a push/pull state. Returned byte slices alias b.
func decodeState(b []byte) ([]entry, error) {
	if len(b) > maxStateDecode {
		return nil, fmt.Errorf("state: %d bytes exceeds %d", len(b), maxStateDecode)
	}
	r := reader{b: b}
	r.header(kindState)
	n := r.uvarint()
	if r.err == nil && n > maxStateEntries {
		r.fail(fmt.Errorf("%d entries exceeds %d", n, maxStateEntries))
	}
	// Every entry takes at least 1+1+8+1 bytes, so a count larger than
	// that allows is a lie and is refused before allocating for it.
	if r.err == nil && n > uint64(len(r.b)/11) {
		r.fail(fmt.Errorf("%d entries in %d bytes: %w", n, len(r.b), errTruncated))
	}
	if r.err != nil {
		return nil, fmt.Errorf("state: %w", r.err)
	}
	out := make([]entry, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		out = append(out, r.entry())
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(errTrailing)
	}
	if r.err != nil {
		return nil, fmt.Errorf("state: %w", r.err)
	}
	return out, nil
}

// checkName is the one rule for node names, used both for Cluster.Name and
// for every name read off the wire.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes, limit %d", len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return errors.New("name is not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("name contains a control character")
		}
	}
	return nil
}
