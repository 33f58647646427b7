package tlsmgr

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLS returns an mTLS server config: the server presents the current
// SVID and requires a client SVID that chains to the trust bundle and names
// any SPIFFE ID of the trust domain, narrowed further by allow when allow is
// not nil (allow gets the peer's SPIFFE ID; an error refuses the handshake).
// Call it after Start; before Start it refuses every client.
//
// The config offers ALPN "h2" and "http/1.1" and accepts TLS 1.2 and 1.3;
// crypto/tls picks 1.3 whenever the client supports it.
func (m *Manager) ServerTLS(allow func(peerID string) error) *tls.Config {
	td := m.trustDomain()
	authorize := tlsconfig.Authorizer(func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		// The bundle source only knows our trust domain, so a foreign peer
		// already fails verification; this check keeps the rule explicit.
		if !id.MemberOf(td) {
			return fmt.Errorf("tlsmgr: peer %s is not in trust domain %q", id, td.Name())
		}
		if allow != nil {
			if err := allow(id.String()); err != nil {
				return fmt.Errorf("tlsmgr: peer %s refused: %w", id, err)
			}
		}
		return nil
	})
	cfg := tlsconfig.MTLSServerConfig(m, m, authorize)
	cfg.VerifyPeerCertificate = m.verifyPeer(authorize)
	cfg.MinVersion = tls.VersionTLS12
	cfg.NextProtos = []string{"h2", "http/1.1"}
	// Sessions resume (resume.go): go-spiffe authorizes the peer in
	// VerifyPeerCertificate, which crypto/tls does not call when a session
	// is resumed, so the ticket records what that verification found and
	// UnwrapSession accepts it only while the chain's root is still
	// trusted, no certificate of the chain has expired and allow still
	// accepts the peer; VerifyConnection then verifies the restored chain
	// again against the current bundle. Tickets are encrypted with keys
	// the Manager rotates every TicketKeyRotation.
	cfg.SessionTicketsDisabled = false
	cfg.WrapSession = m.wrapSession(authorize)
	cfg.UnwrapSession = m.unwrapSession(authorize)
	cfg.VerifyConnection = m.verifyResumed(authorize, nil)
	cfg.Time = m.Now
	return cfg
}

// ClientTLS returns an mTLS client config that presents the current SVID and
// accepts only a server whose SVID chains to the trust bundle and names
// exactly peerID. nextProtos become the ALPN list (for example "h2" or
// "http/1.1"); none means no ALPN.
//
// Hostname verification is replaced by the SPIFFE ID check: go-spiffe sets
// InsecureSkipVerify and verifies the chain itself in VerifyPeerCertificate.
// Each config has its own ClientSessionCache (bounded, clientSessionCacheSize
// entries), so a config built per upstream resumes sessions with that
// upstream only. A session is offered only while the trust bundle is the
// one it was verified against, and every resumed handshake verifies the
// server's chain from the session again, against the current bundle and by
// the same authorizer; a failure forgets every session of the config.
func (m *Manager) ClientTLS(peerID string, nextProtos ...string) (*tls.Config, error) {
	id, err := spiffeid.FromString(peerID)
	if err != nil {
		return nil, fmt.Errorf("invalid peer id %q: %w", peerID, err)
	}
	td := m.trustDomain()
	if td.IsZero() {
		return nil, errors.New("manager not started")
	}
	if !id.MemberOf(td) {
		return nil, fmt.Errorf("wrong trust domain: peer id %q is not in trust domain %q", peerID, td.Name())
	}
	authorize := tlsconfig.AuthorizeID(id)
	cfg := tlsconfig.MTLSClientConfig(m, m, authorize)
	cfg.VerifyPeerCertificate = m.verifyPeer(authorize)
	cfg.MinVersion = tls.VersionTLS12
	if len(nextProtos) > 0 {
		cfg.NextProtos = append([]string(nil), nextProtos...)
	}
	cache := newSessionCache(m, clientSessionCacheSize)
	cfg.ClientSessionCache = cache
	cfg.VerifyConnection = m.verifyResumed(authorize, cache.flush)
	cfg.Time = m.Now
	return cfg, nil
}

// verifyPeer is the VerifyPeerCertificate of a full handshake: go-spiffe's
// (as tlsconfig's), at the Manager's clock, so that full and resumed
// handshakes judge validity by the same time, and remembered (see
// Manager.verify) for the session ticket that follows.
func (m *Manager) verifyPeer(authorize tlsconfig.Authorizer) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		certs := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return fmt.Errorf("x509svid: unable to parse certificate: %w", err)
			}
			certs = append(certs, c)
		}
		_, err := m.authorized(certs, m.now(), authorize)
		if err != nil {
			m.refused(certs, err)
		}
		return err
	}
}

// verifyResumed re-runs go-spiffe's verification and the authorizer on a
// resumed session. crypto/tls calls VerifyConnection on every handshake,
// resumed or not, but VerifyPeerCertificate only on full ones: the peer
// certificates restored from the session are checked against the current
// bundle, at the current time, and by the same authorizer. failed, when
// not nil, runs when a resumed session is refused (the client forgets its
// sessions, so that the next connection is a full handshake).
func (m *Manager) verifyResumed(authorize tlsconfig.Authorizer, failed func()) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if !cs.DidResume {
			return nil // VerifyPeerCertificate already ran
		}
		if _, err := m.authorized(cs.PeerCertificates, m.now(), authorize); err != nil {
			m.refused(cs.PeerCertificates, err)
			if failed != nil {
				failed()
			}
			return fmt.Errorf("tlsmgr: resumed session refused: %w", err)
		}
		m.resumed.Add(1)
		return nil
	}
}

// Resumed returns how many resumed handshakes (as server or client) the
// Manager's configs accepted after re-authorizing the peer.
func (m *Manager) Resumed() uint64 { return m.resumed.Load() }

func (m *Manager) trustDomain() spiffeid.TrustDomain {
	cur := m.cur.Load()
	if cur == nil {
		return spiffeid.TrustDomain{}
	}
	return cur.bundle.TrustDomain()
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake. It is
// meaningful for connections made with ServerTLS or ClientTLS, where the
// handshake has verified that certificate; it reports false when there is
// no peer certificate or it carries no single SPIFFE ID.
func PeerID(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 {
		return "", false
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return "", false
	}
	return id.String(), true
}
