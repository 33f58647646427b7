package gossip

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []message{
		{Kind: kindRecord, Record: entry{Name: "a", Version: 1, Data: []byte{}}},
		{Kind: kindRecord, Record: entry{Name: "gw-eu-1", Version: 1<<63 + 5, Data: []byte("payload")}},
		{Kind: kindRecord, Record: entry{Name: strings.Repeat("n", MaxNameLen), Version: 9, Data: make([]byte, MaxRecordSize)}},
		{Kind: kindWant, Want: want{From: "b", Name: "a", Version: 0}},
		{Kind: kindWant, Want: want{From: "é", Name: "a", Version: 42}},
	} {
		var b []byte
		if m.Kind == kindRecord {
			b = encodeRecord(m.Record)
		} else {
			b = encodeWant(m.Want)
		}
		got, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	in := []entry{
		{Name: "a", Version: 1, Data: []byte("one")},
		{Name: "b", Version: 2, Data: []byte{}},
		{Name: "c", Version: 3, Data: bytes.Repeat([]byte("x"), 1000)},
	}
	got, err := decodeState(encodeState(in, maxStateEncode))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("got %+v", got)
	}
	// Over budget, entries that do not fit are left out, the rest kept.
	got, err = decodeState(encodeState(in, 100))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
		t.Fatalf("budget 100: got %+v", got)
	}
	if got, err := decodeState(encodeState(nil, maxStateEncode)); err != nil || len(got) != 0 {
		t.Fatalf("empty state: %v %v", got, err)
	}
}

func TestDecodeRefuses(t *testing.T) {
	rec := encodeRecord(entry{Name: "a", Version: 7, Data: []byte("data")})
	withLen := func(prefix []byte, n uint64) []byte {
		return binary.AppendUvarint(append([]byte(nil), prefix...), n)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		msg  string // expected substring of the error
	}{
		{"empty", nil, "truncated"},
		{"one byte", []byte{wireVersion}, "truncated"},
		{"wire version", []byte{2, kindRecord}, "wire version"},
		{"kind", []byte{wireVersion, 9}, "kind"},
		{"state kind in message", []byte{wireVersion, kindState, 0}, "kind"},
		{"truncated record", rec[:len(rec)-1], "truncated"},
		{"trailing", append(append([]byte(nil), rec...), 0), "trailing"},
		{"version 0", encodeRecord(entry{Name: "a", Version: 0}), "version 0"},
		{"empty name", encodeRecord(entry{Name: "", Version: 1}), "empty name"},
		{"long name", withLen([]byte{wireVersion, kindRecord}, MaxNameLen+1), "exceeds"},
		{"bad utf8 name", encodeRecord(entry{Name: "\xff", Version: 1}), "UTF-8"},
		{"control name", encodeRecord(entry{Name: "a\x00", Version: 1}), "control"},
		{"record too long", withLen(append([]byte{wireVersion, kindRecord, 1, 'a'}, make([]byte, 8)...), MaxRecordSize+1), "exceeds"},
		{"huge length", withLen([]byte{wireVersion, kindRecord}, 1<<63), "exceeds"},
		{"bad varint", []byte{wireVersion, kindRecord, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "varint"},
		{"too big", make([]byte, maxMessage+1), "exceeds"},
		{"want truncated", encodeWant(want{From: "a", Name: "b", Version: 1})[:6], "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decodeMessage(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("decodeMessage = %+v, %v; want error with %q", m, err, tc.msg)
			}
		})
	}

	for _, tc := range []struct {
		name string
		in   []byte
		msg  string
	}{
		{"message kind", rec, "kind"},
		{"count lies", []byte{wireVersion, kindState, 5}, "truncated"},
		{"count too big", withLen([]byte{wireVersion, kindState}, maxStateEntries+1), "exceeds"},
		{"bad entry", append([]byte{wireVersion, kindState, 1}, bytes.Repeat([]byte{0}, 11)...), "empty name"},
		{"trailing", append(encodeState([]entry{{Name: "a", Version: 1}}, maxStateEncode), 1), "trailing"},
		{"too big", make([]byte, maxStateDecode+1), "exceeds"},
	} {
		t.Run("state "+tc.name, func(t *testing.T) {
			es, err := decodeState(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("decodeState = %+v, %v; want error with %q", es, err, tc.msg)
			}
		})
	}
}

func TestMeta(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want uint64
		ok   bool
	}{
		{"empty", nil, 0, true},
		{"zero", encodeMeta(0), 0, true},
		{"version", encodeMeta(1 << 60), 1 << 60, true},
		{"short", encodeMeta(5)[:5], 0, false},
		{"long", append(encodeMeta(5), 0), 0, false},
		{"wire version", append([]byte{9}, make([]byte, 8)...), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := decodeMeta(tc.in)
			if (err == nil) != tc.ok || v != tc.want {
				t.Fatalf("decodeMeta = %d, %v; want %d, ok=%v", v, err, tc.want, tc.ok)
			}
		})
	}
}

// FuzzDecodeMessage: decoding never panics, and whatever decodes
// re-encodes to the same bytes (the format has one encoding per value, so
// nothing a peer sends is read two ways).
func FuzzDecodeMessage(f *testing.F) {
	f.Add(encodeRecord(entry{Name: "a", Version: 1, Data: []byte("rec")}))
	f.Add(encodeRecord(entry{Name: "gw-eu-1", Version: 1 << 62, Data: []byte{}}))
	f.Add(encodeWant(want{From: "b", Name: "a", Version: 3}))
	f.Add([]byte{wireVersion, kindRecord, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			return
		}
		var again []byte
		switch m.Kind {
		case kindRecord:
			again = encodeRecord(m.Record)
		case kindWant:
			again = encodeWant(m.Want)
		default:
			t.Fatalf("decoded unknown kind %d", m.Kind)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState([]entry{{Name: "a", Version: 1, Data: []byte("x")}, {Name: "b", Version: 2, Data: []byte{}}}, maxStateEncode))
	f.Add(encodeState(nil, maxStateEncode))
	f.Add([]byte{wireVersion, kindState, 0xff, 0xff, 0x03})
	f.Add([]byte{wireVersion, kindState, 1, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeState(b)
		if err != nil {
			return
		}
		for _, e := range es {
			if checkName(e.Name) != nil || e.Version == 0 || len(e.Data) > MaxRecordSize {
				t.Fatalf("decoded an invalid entry %+v", e)
			}
		}
		if again := encodeState(es, maxStateDecode); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta(12345))
	f.Add([]byte{})
	f.Add([]byte{2, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeMeta(b)
		if err != nil || len(b) == 0 {
			return
		}
		if !bytes.Equal(encodeMeta(v), b) {
			t.Fatalf("meta %x decoded to %d", b, v)
		}
	})
}
