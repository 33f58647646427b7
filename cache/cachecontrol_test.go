package cache

import "testing"

func TestParseRespCC(t *testing.T) {
	cases := []struct {
		in   []string
		want string // canonical String(), "invalid" when the response must be stale
	}{
		{[]string{"max-age=60"}, "max-age=60"},
		{[]string{"MAX-AGE=60, Public"}, "max-age=60, public"},
		{[]string{"max-age=003600"}, "max-age=3600"},
		{[]string{`max-age="60"`}, "max-age=60"},
		{[]string{`extension="max-age=3600", max-age=1`}, "max-age=1"},
		{[]string{`max-age=1, extension="a, max-age=3600"`}, "max-age=1"},
		{[]string{"max-age='3600'"}, "invalid"},
		{[]string{"max-age =3600"}, "invalid"},
		{[]string{"max-age= 3600"}, "invalid"},
		{[]string{"max-age=3600.5"}, "invalid"},
		{[]string{"max-age=-1"}, "invalid"},
		{[]string{"max-age"}, "invalid"},
		{[]string{"max-age=60, max-age=60"}, "max-age=60"},
		{[]string{"max-age=60", "max-age=1"}, "invalid"},
		{[]string{"max-age=99999999999999999999"}, "max-age=2147483648"},
		{[]string{"s-maxage=5, stale-while-revalidate=30, stale-if-error=600"}, "s-maxage=5, stale-while-revalidate=30, stale-if-error=600"},
		{[]string{"no-cache, no-store, must-revalidate, proxy-revalidate, must-understand"}, "no-cache, no-store, must-revalidate, proxy-revalidate, must-understand"},
		{[]string{`no-cache="Set-Cookie"`}, `no-cache="Set-Cookie"`},
		{[]string{`No-Cache="x-a, Set-Cookie", max-age=5`}, `max-age=5, no-cache="X-A, Set-Cookie"`},
		{[]string{`no-cache=""`}, "no-cache"},
		{[]string{`no-cache="a", no-cache`}, `no-cache, no-cache="A"`},
		{[]string{"private"}, "private"},
		{[]string{`private="X-A, x-b"`}, `private="X-A, X-B"`},
		{[]string{"private=X-A"}, `private="X-A"`},
		{[]string{",,, ,public,,"}, "public"},
		{[]string{`foo="unterminated, max-age=5`}, ""},
		{nil, ""},
	}
	for _, c := range cases {
		got := parseRespCC(c.in)
		s := got.String()
		if got.invalid {
			s = "invalid"
		}
		if s != c.want {
			t.Errorf("%q: %q, want %q", c.in, s, c.want)
		}
	}
}

func TestParseReqCC(t *testing.T) {
	cases := []struct {
		in, pragma []string
		want       reqCC
	}{
		{nil, nil, reqCC{maxAge: -1, maxStale: -1, minFresh: -1, staleIfError: -1}},
		{[]string{"max-age=5, min-fresh=3, max-stale=7, stale-if-error=9"}, nil, reqCC{maxAge: 5, maxStale: 7, minFresh: 3, staleIfError: 9}},
		{[]string{"max-stale"}, nil, reqCC{maxAge: -1, maxStale: -1, minFresh: -1, staleIfError: -1, maxStaleAny: true}},
		{[]string{"max-age=10", "max-age=5"}, nil, reqCC{maxAge: 5, maxStale: -1, minFresh: -1, staleIfError: -1}},
		{[]string{"max-age=x"}, nil, reqCC{maxAge: -1, maxStale: -1, minFresh: -1, staleIfError: -1}},
		{[]string{"No-Cache, NO-STORE, only-if-cached"}, nil, reqCC{maxAge: -1, maxStale: -1, minFresh: -1, staleIfError: -1, noCache: true, noStore: true, onlyIfCached: true}},
		{nil, []string{"no-cache"}, reqCC{maxAge: -1, maxStale: -1, minFresh: -1, staleIfError: -1, noCache: true}},
		{[]string{"max-age=1"}, []string{"no-cache"}, reqCC{maxAge: 1, maxStale: -1, minFresh: -1, staleIfError: -1}},
	}
	for _, c := range cases {
		if got := parseReqCC(c.in, c.pragma); got != c.want {
			t.Errorf("%q %q: %+v, want %+v", c.in, c.pragma, got, c.want)
		}
	}
}

func TestParseReqCCNoAlloc(t *testing.T) {
	lines := []string{`max-age=5, no-cache, x="a,b", max-stale`}
	if n := testing.AllocsPerRun(100, func() { parseReqCC(lines, nil) }); n != 0 {
		t.Fatalf("parseReqCC allocates %v times", n)
	}
}
