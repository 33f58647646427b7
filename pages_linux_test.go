package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestReadOnlyImage(t *testing.T) {
	m := func(header, anon string) string {
		return header + "\nSize: 4 kB\nRss: 4 kB\nAnonymous: " + anon + " kB\nVmFlags: rd ex mr mw me\n"
	}
	maps := m("00400000-010f8000 r-xp 00000000 fd:01 1234 /usr/bin/meshd", "0") +
		m("010f8000-02018000 r--p 00cf8000 fd:01 1234 /usr/bin/meshd", "0") +
		m("02018000-020b9000 rw-p 01c18000 fd:01 1234 /usr/bin/meshd", "0") +
		m("020b9000-04101000 rw-p 00000000 00:00 0", "108") +
		m("03000000-03001000 r--p 02c18000 fd:01 1234 /usr/bin/meshd", "4") + // relocated, then made read-only
		m("7f0000000000-7f0000001000 r--p 00000000 fd:01 99 /usr/bin/other", "0") +
		m("7f0000002000-7f0000003000 r--s 00000000 fd:01 1234 /usr/bin/meshd", "0") +
		m("7ffd1000-7ffd2000 r-xp 00000000 00:00 0 [vdso]", "0")
	got, err := readOnlyImage(strings.NewReader(maps), "/usr/bin/meshd")
	if err != nil {
		t.Fatal(err)
	}
	// Text and read-only data of meshd itself; not its writable data, not
	// anonymous memory, not a read-only mapping with pages of its own, not
	// another file, not a shared mapping.
	want := [][2]uintptr{{0x400000, 0x10f8000}, {0x10f8000, 0x2018000}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ranges %x, want %x", got, want)
	}
	if _, err := readOnlyImage(strings.NewReader("zz-yy r-xp 0 0:0 1 /usr/bin/meshd\nAnonymous: 0 kB\n"), "/usr/bin/meshd"); err == nil {
		t.Fatal("a malformed range was accepted")
	}
}

// The test binary is a Go program that links what meshd links: after its
// start-up its image pages are mapped; dropping them must shrink its
// resident file pages, and the program must go on running the code it
// needs (this test continues).
func TestDropImagePages(t *testing.T) {
	before := rssFileKiB(t)
	n, err := dropImagePages()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	t.Logf("advised %d MiB; RssFile %d -> %d KiB", n>>20, before, after)
	if n == 0 || after >= before-1024 {
		t.Fatalf("RssFile %d KiB before, %d after dropping %d bytes: no pages were dropped", before, after, n)
	}
}

func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
