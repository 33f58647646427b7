package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Start-up touches most of meshd's binary: the init functions of several
// hundred packages (gRPC and protobuf alone, pulled in by gobgp and the
// Workload API client, are 9 MiB of it) are spread over the text, and the
// kernel maps 64 KiB around each page a process faults in. A sidecar that
// has started has 20 of its 24 MiB resident in the binary's pages, most of
// which it never runs again. Once the node serves, meshd drops its own
// mappings of the binary's read-only segments (text and read-only data)
// with MADV_DONTNEED: the pages stay in the page cache, shared with every
// other meshd on the host, and what the node runs afterwards faults back
// in as minor faults (a few hundred, once). Its resident set is then what
// serving uses. Only segments mapped read-only from the executable are
// touched, and only those without a page of their own (readOnlyImage):
// their pages are the file's, so dropping the mapping loses nothing;
// writable data and the heap are left alone.

// readOnlyImage lists the address ranges of the executable's read-only
// private mappings in a /proc/self/smaps listing that hold no anonymous
// page. A mapping that does was written before it was made read-only (the
// relocations of a binary linked with libc, as a -race build is, or of a
// position-independent one): dropping it would bring back the file's bytes
// in place of the relocated ones, so it is left mapped.
func readOnlyImage(smaps io.Reader, exe string) ([][2]uintptr, error) {
	var out [][2]uintptr
	var cur [2]uintptr
	candidate := false
	sc := bufio.NewScanner(smaps)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "Anonymous:"); ok {
			if candidate && strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) == "0" {
				out = append(out, cur)
			}
			candidate = false
			continue
		}
		// A mapping's header: 00400000-010f8000 r-xp 00000000 fd:01 1234 /usr/bin/meshd
		f := strings.Fields(line)
		if len(f) < 5 || !strings.Contains(f[0], "-") || len(f[1]) != 4 {
			continue
		}
		candidate = false
		if len(f) < 6 || f[5] != exe || f[1][1] == 'w' || f[1][3] != 'p' {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || b <= a {
			return nil, fmt.Errorf("smaps: bad range %q", f[0])
		}
		cur, candidate = [2]uintptr{uintptr(a), uintptr(b)}, true
	}
	return out, sc.Err()
}

// dropImagePages unmaps the pages of the executable's read-only segments
// from this process (they stay cached) and returns how many bytes of
// address space it advised.
func dropImagePages() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ranges, err := readOnlyImage(f, exe)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, r := range ranges {
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, r[0], r[1]-r[0], syscall.MADV_DONTNEED); e != 0 {
			return n, fmt.Errorf("madvise %#x-%#x: %w", r[0], r[1], e)
		}
		n += int64(r[1] - r[0])
	}
	return n, nil
}
