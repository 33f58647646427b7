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
	cfg.MinVersion = tls.VersionTLS12
	cfg.NextProtos = []string{"h2", "http/1.1"}
	// go-spiffe authorizes the peer in VerifyPeerCertificate, which crypto/tls
	// does not call when a session is resumed: a ticket issued to a peer that
	// allow accepted yesterday would let it skip today's policy, and a ticket
	// would outlive the peer's SVID. Without tickets every connection runs a
	// full handshake and the authorizer sees every peer.
	cfg.SessionTicketsDisabled = true
	cfg.VerifyConnection = m.verifyResumed(authorize)
	return cfg
}

// ClientTLS returns an mTLS client config that presents the current SVID and
// accepts only a server whose SVID chains to the trust bundle and names
// exactly peerID. nextProtos become the ALPN list (for example "h2" or
// "http/1.1"); none means no ALPN.
//
// Hostname verification is replaced by the SPIFFE ID check: go-spiffe sets
// InsecureSkipVerify and verifies the chain itself in VerifyPeerCertificate.
// There is no ClientSessionCache: a resumed session would skip that check.
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
	cfg.MinVersion = tls.VersionTLS12
	if len(nextProtos) > 0 {
		cfg.NextProtos = append([]string(nil), nextProtos...)
	}
	cfg.ClientSessionCache = nil
	cfg.VerifyConnection = m.verifyResumed(authorize)
	return cfg, nil
}

// verifyResumed re-runs go-spiffe's verification and the authorizer on a
// resumed session. crypto/tls calls VerifyConnection on every handshake,
// resumed or not, but VerifyPeerCertificate only on full ones. The configs
// built here disable resumption, so this is a second line of defence for a
// caller that turns it back on (a ClientSessionCache, tickets): the peer
// certificates restored from the session are checked against the current
// bundle, at the current time, and by the same authorizer.
func (m *Manager) verifyResumed(authorize tlsconfig.Authorizer) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if !cs.DidResume {
			return nil // VerifyPeerCertificate already ran
		}
		id, chains, err := x509svid.Verify(cs.PeerCertificates, m)
		if err != nil {
			return err
		}
		return authorize(id, chains)
	}
}

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
