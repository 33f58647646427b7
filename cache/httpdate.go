package cache

import (
	"errors"
	"strings"
	"time"
)

var errBadDate = errors.New("cache: not an HTTP-date")

// parseHTTPDate parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, or
// the obsolete rfc850-date and asctime-date forms, each with its exact
// widths and separators. http.ParseTime is more lenient (it takes a
// one-digit hour, runs of spaces), but RFC 9111 §5.3 makes an invalid
// Expires mean "already expired", so guessing at a malformed date would
// keep a response fresh that its origin meant to be stale. Names are
// matched without regard to case, as most caches do.
func parseHTTPDate(s string) (time.Time, error) {
	var layout, v string
	switch {
	case len(s) == 29 && s[3] == ',' && s[4] == ' ' && s[7] == ' ' && s[11] == ' ' && s[16] == ' ' &&
		isClock(s[17:25]) && s[25] == ' ' && strings.EqualFold(s[26:], "GMT") &&
		isDigits(s[5:7]) && isDigits(s[12:16]):
		// Sun, 06 Nov 1994 08:49:37 GMT
		layout, v = "Mon, 02 Jan 2006 15:04:05", s[:25]
	case len(s) == 24 && s[3] == ' ' && s[7] == ' ' && (s[8] == ' ' || isDigits(s[8:9])) && isDigits(s[9:10]) &&
		s[10] == ' ' && isClock(s[11:19]) && s[19] == ' ' && isDigits(s[20:]):
		// Sun Nov  6 08:49:37 1994
		layout, v = "Mon Jan _2 15:04:05 2006", s
	default:
		// Sunday, 06-Nov-94 08:49:37 GMT
		i := strings.IndexByte(s, ',')
		r := ""
		if i > 0 {
			r = s[i+1:]
		}
		if len(r) != 23 || r[0] != ' ' || !isDigits(r[1:3]) || r[3] != '-' || r[7] != '-' || !isDigits(r[8:10]) ||
			r[10] != ' ' || !isClock(r[11:19]) || r[19] != ' ' || !strings.EqualFold(r[20:], "GMT") {
			return time.Time{}, errBadDate
		}
		layout, v = "Monday, 02-Jan-06 15:04:05", s[:len(s)-4]
	}
	t, err := time.Parse(layout, v)
	if err != nil {
		return time.Time{}, errBadDate
	}
	return t, nil
}

// isClock reports whether s is hh:mm:ss with two digits each.
func isClock(s string) bool {
	return len(s) == 8 && s[2] == ':' && s[5] == ':' && isDigits(s[:2]) && isDigits(s[3:5]) && isDigits(s[6:])
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
