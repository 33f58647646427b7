package tlsmgr

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCertName is the only DNS name of the default certificate that
// SourceInternal and SourceACME present to a client whose server name has
// no certificate: no SNI at all (a client that connects to an IP address,
// `curl https://127.0.0.1/`), or a name Allow refuses. ".invalid" is
// reserved (RFC 6761 §6.4), so the certificate never verifies for any host a
// client may want, and trusting the internal CA grants it nothing; a client
// that does not verify (curl -k, test tools, QUIC clients that send a
// placeholder SNI such as "localhost") gets a handshake and then the HTTP
// layer's answer for the Host it asks for (404 for a host no service
// publishes), instead of an opaque internal_error alert.
//
// RFC 6066 §3 lets a server that does not recognize the server name either
// abort with unrecognized_name or continue: continuing is what nginx's
// default server and most CDNs do, and crypto/tls cannot send
// unrecognized_name from GetCertificate anyway (any error there becomes
// internal_error(80)).
const DefaultCertName = "default.meshd.invalid"

// defaultLogEvery bounds how often one reason for serving the default
// certificate is logged: a scanner sweeping the address makes one record a
// minute per reason, with a count of the handshakes in between.
const defaultLogEvery = time.Minute

// Reasons for serving the default certificate, as logged.
const (
	reasonNoSNI     = "client sent no server name (SNI)"
	reasonNoCertFor = "no certificate for the server name"
	reasonNoDefault = "no default certificate either: handshake failed"
)

// reasonFor tells why hello gets the default certificate.
func reasonFor(hello *tls.ClientHelloInfo) string {
	if hello.ServerName == "" {
		return reasonNoSNI
	}
	return reasonNoCertFor
}

// defaultCert holds the default certificate of SourceInternal (a leaf of
// the internal CA) or SourceACME (self-signed: there is no CA of our own),
// issued at Start and renewed, like every internal leaf, two thirds into
// its life. The handshake path reads it with one atomic load.
type defaultCert struct {
	sign func(host string, now time.Time) (*tls.Certificate, error)
	cur  atomic.Pointer[defaultEntry]
	mu   sync.Mutex // serializes renewals
}

type defaultEntry struct {
	cert    *tls.Certificate
	renewAt time.Time
}

func newDefaultCert(sign func(string, time.Time) (*tls.Certificate, error), now time.Time) (*defaultCert, error) {
	d := &defaultCert{sign: sign}
	if _, err := d.get(now); err != nil {
		return nil, err
	}
	return d, nil
}

// get returns the default certificate, renewing it when due. A failed
// renewal keeps the current certificate while it is valid.
func (d *defaultCert) get(now time.Time) (*tls.Certificate, error) {
	if e := d.cur.Load(); e != nil && now.Before(e.renewAt) {
		return e.cert, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cur := d.cur.Load()
	if cur != nil && now.Before(cur.renewAt) {
		return cur.cert, nil // renewed while this handshake waited
	}
	c, err := d.sign(DefaultCertName, now)
	if err != nil {
		if cur != nil && now.Before(cur.cert.Leaf.NotAfter) {
			return cur.cert, nil
		}
		return nil, err
	}
	d.cur.Store(&defaultEntry{cert: c, renewAt: now.Add(c.Leaf.NotAfter.Sub(now) * 2 / 3)})
	return c, nil
}

// defaultLog rate-limits the records of handshakes answered with the
// default certificate: the first of each reason is logged, then at most one
// per defaultLogEvery, carrying how many went unlogged since the last.
type defaultLog struct {
	mu      sync.Mutex
	reasons map[string]*defaultReason
}

type defaultReason struct {
	last     time.Time
	unlogged uint64
}

// noteDefault records one handshake answered with the default certificate
// (or, for reasonNoDefault, failed for the want of it); it logs when this
// reason was not logged within defaultLogEvery.
func (p *PublicCerts) noteDefault(reason string, hello *tls.ClientHelloInfo, why error) {
	now := p.clock()
	l := &p.defaults
	l.mu.Lock()
	r := l.reasons[reason]
	if r == nil {
		if l.reasons == nil {
			l.reasons = map[string]*defaultReason{}
		}
		r = &defaultReason{}
		l.reasons[reason] = r
	} else if now.Sub(r.last) < defaultLogEvery {
		r.unlogged++
		l.mu.Unlock()
		return
	}
	unlogged := r.unlogged
	r.last, r.unlogged = now, 0
	l.mu.Unlock()

	attrs := []any{"reason", reason, "source", p.source(), "server_name", hello.ServerName,
		"unlogged_since_last", unlogged, "log_every", defaultLogEvery}
	if hello.Conn != nil {
		attrs = append(attrs, "remote", hello.Conn.RemoteAddr().String())
	}
	if why != nil {
		attrs = append(attrs, "err", why.Error())
	}
	if reason == reasonNoDefault {
		p.logger().Error("public TLS handshake failed", attrs...)
		return
	}
	p.logger().Info("public TLS handshake answered with the default certificate", attrs...)
}
