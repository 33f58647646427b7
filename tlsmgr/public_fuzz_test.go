package tlsmgr

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

// FuzzNormalizeHost feeds server names (what any client puts in SNI, and
// what reaches Allow) to normalizeHost.
func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"web.localhost", "WEB.LocalHost.", "", ".", "..", "a..b", ".a", "127.0.0.1", "::1", "[::1]",
		"*.example.com", "*", "xn--bcher-kva.example", "-a.example", "a-.example", "a.-", "1.2.3", "01.02.03.04",
		"123.example", "a_b.example", "é.example", "a\x00b", "a b", strings.Repeat("a", 63) + ".x",
		strings.Repeat("a", 64) + ".x", strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 127) + "a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := normalizeHost(in)
		if err != nil {
			if out != "" {
				t.Fatalf("error %v with output %q", err, out)
			}
			return
		}
		if out != strings.ToLower(strings.TrimSuffix(in, ".")) {
			t.Fatalf("normalizeHost(%q) = %q: not just lower case without the trailing dot", in, out)
		}
		if len(out) == 0 || len(out) > maxHostLen || out[0] == '.' || out[len(out)-1] == '.' || strings.Contains(out, "..") {
			t.Fatalf("normalizeHost(%q) = %q: bad shape", in, out)
		}
		for i := 0; i < len(out); i++ {
			c := out[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				t.Fatalf("normalizeHost(%q) = %q: byte %q", in, out, c)
			}
		}
		for _, l := range strings.Split(out, ".") {
			if len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
				t.Fatalf("normalizeHost(%q) = %q: bad label %q", in, out, l)
			}
		}
		if again, err := normalizeHost(out); err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
	})
}

// FuzzParsePublicPair feeds certificate and key files (files an operator
// or a deploy tool writes) to parsePublicPair.
func FuzzParsePublicPair(f *testing.F) {
	pki := newTestPKI(f, "fuzz CA")
	chain, key, _ := pki.leaf(f, leafOpts{names: []string{"web.example", "*.api.example"}})
	f.Add(chain, key)
	f.Add(key, chain)
	f.Add(chain[:len(chain)/2], key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), key)
	f.Add([]byte{}, []byte{})
	caChain, caKey, _ := pki.leaf(f, leafOpts{names: []string{"ca.example"}, isCA: true})
	f.Add(caChain, caKey)
	noName, noNameKey, _ := pki.leaf(f, leafOpts{})
	f.Add(noName, noNameKey)
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		c, err := parsePublicPair(certPEM, keyPEM, now)
		if err != nil {
			if c != nil {
				t.Fatal("error with a certificate")
			}
			return
		}
		if c.Leaf == nil || c.Leaf.IsCA || len(c.Leaf.DNSNames) == 0 || now.Before(c.Leaf.NotBefore) || !now.Before(c.Leaf.NotAfter) {
			t.Fatalf("accepted a pair it must refuse: %+v", c.Leaf)
		}
		set := newFileSet([]*tls.Certificate{c}, fileVersion{})
		for _, n := range c.Leaf.DNSNames {
			if got := set.pick(strings.TrimPrefix(n, "*.")); got != c {
				t.Fatalf("pick(%q) did not return the only pair", n)
			}
		}
	})
}
