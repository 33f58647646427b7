package tlsmgr

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// Refused handshakes: every peer whose certificate chain fails (an
// unknown or expired root, an expired SVID, another trust domain, an
// identity the authorizer refuses) is counted by reason and logged at warn
// with the identity it claimed and the reason, at most once a minute per
// claimed identity and reason, so a peer that retries does not flood the
// log.

// Reasons a peer is refused (PeerRefusals' keys).
const (
	RefusedUnknownRoot = "unknown_root" // the chain leads to no root of the bundle
	RefusedExpired     = "expired"      // a certificate of the chain is out of its validity
	RefusedIdentity    = "identity"     // valid, but not an identity this listener or upstream accepts
	RefusedOther       = "other"        // no certificate, not an SVID, unparsable
)

var refusalReasons = [...]string{RefusedUnknownRoot, RefusedExpired, RefusedIdentity, RefusedOther}

type refusalCounters [len(refusalReasons)]atomic.Uint64

// PeerRefusals returns the handshakes refused since Start, by reason.
func (m *Manager) PeerRefusals() map[string]uint64 {
	out := make(map[string]uint64, len(refusalReasons))
	for i, r := range refusalReasons {
		out[r] = m.refusals[i].Load()
	}
	return out
}

func classifyRefusal(err error) int {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua), strings.Contains(err.Error(), "unknown authority"):
		return 0
	case errors.As(err, &ci) && ci.Reason == x509.Expired, strings.Contains(err.Error(), "expired"),
		strings.Contains(err.Error(), "not yet valid"):
		return 1
	case strings.Contains(err.Error(), "refused"), strings.Contains(err.Error(), "not in trust domain"),
		strings.Contains(err.Error(), "unexpected ID"), strings.Contains(err.Error(), "unexpected trust domain"):
		return 2
	}
	return 3
}

// refused counts and (rate-limited) logs a refused peer.
func (m *Manager) refused(certs []*x509.Certificate, err error) {
	i := classifyRefusal(err)
	m.refusals[i].Add(1)
	peer, issuer := "(no certificate)", ""
	if len(certs) > 0 {
		// The issuer's name and key ID tell which root the peer is on
		// (a node left on a rotated-out root, another mesh's CA).
		issuer = certs[0].Issuer.String()
		if len(certs[0].AuthorityKeyId) > 0 {
			issuer += " keyid " + hex.EncodeToString(certs[0].AuthorityKeyId)
		}
		if len(issuer) > 256 {
			issuer = issuer[:256]
		}
		peer = certs[0].Subject.String()
		if len(certs[0].URIs) > 0 {
			peer = certs[0].URIs[0].String()
		}
	}
	if len(peer) > 256 {
		peer = peer[:256]
	}
	key := refusalReasons[i] + "\x00" + peer
	now := time.Now()
	if last, ok := m.refusalLog.Load(key); ok && now.Sub(last.(time.Time)) < time.Minute {
		return
	}
	m.refusalLog.Store(key, now)
	if m.refusalLogN.Add(1) > 10000 { // bounded: start over
		m.refusalLog.Clear()
		m.refusalLogN.Store(0)
	}
	m.logger().Warn("tls: refused a peer", "peer", peer, "reason", refusalReasons[i], "issuer", issuer, "err", err)
}
