package cache

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func FuzzCacheControl(f *testing.F) {
	for _, s := range []string{
		"max-age=60", "max-age=60, s-maxage=10", `no-cache="Set-Cookie, X-Foo"`, `private="a\"b"`,
		"max-age=99999999999999999999", "max-age=-1", `max-age="30"`, "MAX-AGE=5,,,public",
		"stale-while-revalidate=30, stale-if-error=600", "max-stale", "max-stale=5, min-fresh=3",
		`x="unterminated`, "=,=,", "no-store, must-understand", " , max-age = 3 ,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := parseRespCC([]string{s})
		for _, v := range []int64{c.maxAge, c.sMaxAge, c.swr, c.sie} {
			if v < absent || v > maxDelta {
				t.Fatalf("value %d out of range for %q", v, s)
			}
		}
		if !strings.Contains(strings.ToLower(s), "max-age") && c.maxAge != absent {
			t.Fatalf("max-age from nowhere in %q", s)
		}
		if !c.invalid {
			if again := parseRespCC([]string{c.String()}); again.String() != c.String() || again.invalid {
				t.Fatalf("round trip of %q: %q became %q", s, c.String(), again.String())
			}
		}
		r := parseReqCC([]string{s}, nil)
		for _, v := range []int64{r.maxAge, r.maxStale, r.minFresh, r.staleIfError} {
			if v < absent || v > maxDelta {
				t.Fatalf("request value %d out of range for %q", v, s)
			}
		}
		// Splitting the value into two field lines at a comma means the
		// same (RFC 9110 §5.3).
		if i := strings.IndexByte(s, ','); i >= 0 && !strings.Contains(s, `"`) {
			two := parseRespCC([]string{s[:i], s[i+1:]})
			if two.String() != c.String() || two.invalid != c.invalid {
				t.Fatalf("%q split at %d: %q vs %q", s, i, two.String(), c.String())
			}
		}
	})
}

// FuzzVaryKey checks that two requests share a secondary key exactly
// when their nominated fields normalize equally, and that keys never
// collide across header presence.
func FuzzVaryKey(f *testing.F) {
	f.Add("Accept-Encoding", "gzip, br", "gzip,br")
	f.Add("accept-language, Accept-Encoding", "en", "en ")
	f.Add("Accept-Language", "en-US ; q=0.5, de", "en-us;Q=0.5,DE")
	f.Add("*", "a", "a")
	f.Add("X-A,X-B", "a\x00b", "a\x01\x02b")
	f.Add("X", "", " ")
	f.Fuzz(func(t *testing.T, vary, a, b string) {
		names, star := parseVary([]string{vary})
		if star {
			return
		}
		for i, n := range names {
			if !validToken(n) || (i > 0 && names[i-1] >= n) {
				t.Fatalf("names %q not sorted valid tokens", names)
			}
		}
		ha, hb := http.Header{}, http.Header{}
		for _, n := range names {
			ha[n] = []string{a}
			hb[n] = []string{b}
		}
		ka := appendVaryKey([]byte("http://h/"), names, ha)
		kb := appendVaryKey([]byte("http://h/"), names, hb)
		same := true // every nominated field normalizes a and b alike
		for _, n := range names {
			lang := n == "Accept-Language"
			same = same && bytes.Equal(appendNormalized(nil, []string{a}, lang), appendNormalized(nil, []string{b}, lang))
		}
		if len(names) > 0 && bytes.Equal(ka, kb) != same {
			t.Fatalf("keys equal=%v but fields normalized alike=%v (%q, %q)", bytes.Equal(ka, kb), same, a, b)
		}
		if !bytes.Equal(ka, appendVaryKey([]byte("http://h/"), names, ha)) {
			t.Fatal("key not deterministic")
		}
		if len(names) > 0 && bytes.Equal(ka, appendVaryKey([]byte("http://h/"), names, http.Header{})) {
			t.Fatal("present header keyed like an absent one")
		}
		for _, lang := range []bool{false, true} {
			na := appendNormalized(nil, []string{a}, lang)
			if !bytes.ContainsAny(na, "\x00\x01") && !bytes.Equal(appendNormalized(nil, []string{string(na)}, lang), na) {
				t.Fatalf("normalization (lang %v) not idempotent: %q", lang, na)
			}
		}
	})
}

// FuzzPrimaryKey checks key building from any Host and target.
func FuzzPrimaryKey(f *testing.F) {
	f.Add("Example.com:80", "/a?b#c")
	f.Add("[::1]:443", "http://x/y")
	f.Add("", "*")
	f.Add("a b", "/")
	f.Fuzz(func(t *testing.T, host, target string) {
		r := &http.Request{Host: host, RequestURI: target}
		k, ok := appendPrimaryKey(nil, "http", r)
		if !ok {
			return
		}
		s := string(k)
		if !strings.HasPrefix(s, "http://") || strings.ContainsRune(s, '#') {
			t.Fatalf("key %q", s)
		}
		rest := s[len("http://"):]
		h := rest[:strings.IndexAny(rest+"/", "/")]
		if strings.ContainsAny(h, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") || h == "" || strings.HasSuffix(h, ":80") {
			t.Fatalf("host part %q of %q not normalized", h, s)
		}
		// The purge normalization names the same key.
		if n, err := NormalizeURL(s); err == nil && n != s && !strings.Contains(h, "@") {
			t.Fatalf("NormalizeURL(%q) = %q", s, n)
		}
	})
}

func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=3-", "bytes=1-0", "bytes=0-1,2-3", "BYTES = 1-2", "bytes=99999999999999999999999-"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, spec string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 {
			return
		}
		start, end, res := parseRange(spec, size)
		if res == rangeOK && (start < 0 || end < start || end >= size) {
			t.Fatalf("%q size %d: %d-%d", spec, size, start, end)
		}
	})
}

func FuzzEtagList(f *testing.F) {
	f.Add(`"a", W/"b", *`, `"b"`)
	f.Add(`"a,b"`, `"a,b"`)
	f.Add(`W/"x`, `W/"x"`)
	f.Fuzz(func(t *testing.T, list, etag string) {
		weak := etagListMatches([]string{list}, etag, false)
		strong := etagListMatches([]string{list}, etag, true)
		if strong && !weak {
			t.Fatalf("strong match without weak match: %q %q", list, etag)
		}
	})
}

// FuzzContentRange: a Content-Range is accepted only as one satisfied
// range inside a known complete length.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-4/10", "bytes 4-9/10", "bytes 0-4/*", "bytes */10", "bytes 5-4/10", "bytes 0-10/10", " bytes 1-1/2 ", "items 0-1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		first, last, complete, ok := parseContentRange(v)
		if ok && (first < 0 || last < first || last >= complete) {
			t.Fatalf("%q: accepted %d-%d/%d", v, first, last, complete)
		}
	})
}
