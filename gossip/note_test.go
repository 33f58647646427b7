package gossip

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// A note goes whole, over TCP, to the member it is for and to no one else;
// one bigger than a packet (what a policy document is) arrives too.
func TestSendNote(t *testing.T) {
	type got struct {
		from string
		data []byte
	}
	var mu sync.Mutex
	recv := map[string][]got{}
	onNote := func(self string) func(*Cluster) {
		return func(c *Cluster) {
			c.OnNote = func(from string, data []byte) {
				mu.Lock()
				recv[self] = append(recv[self], got{from, data})
				mu.Unlock()
			}
		}
	}
	a := newNode(t, "a", onNote("a"))
	b := newNode(t, "b", joining(a), onNote("b"))
	newNode(t, "c", joining(a), onNote("c"))
	waitFor(t, 5*time.Second, "three members", func() bool {
		return seesExactly(a, "a", "b", "c") && seesExactly(b, "a", "b", "c")
	})

	big := bytes.Repeat([]byte("policy "), 40<<10) // 280 KiB
	if err := a.Send("b", big); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b receives the note", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(recv["b"]) == 1
	})
	mu.Lock()
	if g := recv["b"][0]; g.from != "a" || !bytes.Equal(g.data, big) {
		t.Errorf("b got %d bytes from %q, want %d from a", len(g.data), g.from, len(big))
	}
	mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	if len(recv["a"])+len(recv["c"]) != 0 {
		t.Errorf("notes reached members they were not for: a %d, c %d", len(recv["a"]), len(recv["c"]))
	}
	mu.Unlock()

	if err := a.Send("nobody", []byte("x")); err == nil {
		t.Error("Send to an unknown member: no error")
	}
	if err := a.Send("a", []byte("x")); err == nil {
		t.Error("Send to itself: no error")
	}
	if err := a.Send("b", make([]byte, MaxNoteSize+1)); err == nil {
		t.Error("Send over MaxNoteSize: no error")
	}
}

// Malformed notes are refused by the decoder, never delivered.
func TestDecodeNote(t *testing.T) {
	good := encodeNote(note{From: "a", Data: []byte("hello")})
	m, err := decodeMessage(good)
	if err != nil || m.Kind != kindNote || m.Note.From != "a" || string(m.Note.Data) != "hello" {
		t.Fatalf("decode = %+v, %v", m, err)
	}
	for name, b := range map[string][]byte{
		"truncated": good[:len(good)-1],
		"trailing":  append(bytes.Clone(good), 0),
		"no name":   encodeNote(note{From: "", Data: []byte("x")}),
	} {
		if _, err := decodeMessage(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
