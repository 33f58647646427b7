// Package tlsmgr is meshd's identity layer: the built-in certificate
// authority, the X.509-SVIDs every node presents, the mutual-TLS
// *tls.Config values the rest of meshd uses on every hop, and the public
// certificates of the edge.
//
// It is the only package of meshd that imports go-spiffe and certmagic.
// Other packages pass SPIFFE IDs as plain strings
// ("spiffe://<td>/service/web") and receive ready-made *tls.Config values,
// so swapping or upgrading either library touches this package alone.
//
// The pieces:
//
//   - InitCA / LoadCA / CA.Issue / IssueFiles: the built-in CA behind
//     `meshd ca init` and `meshd ca issue`. The root is a self-signed ECDSA
//     P-256 certificate whose URI SAN names the trust domain (spiffe://<td>);
//     leaves are X.509-SVIDs as the SPIFFE X509-SVID standard §4 and §5
//     require: one SPIFFE URI SAN with a non-root path, digitalSignature,
//     not a CA.
//     ca.crt is a trust bundle of one or more roots; ca.key belongs to the
//     one that issues.
//   - RotateBegin / RotateSwitch / RotateFinish / ReadRotation: the staged
//     root rotation behind `meshd ca rotate` (rotate.go); a minting Manager
//     watches ca.crt and ca.key and follows each step.
//   - EdgeID / GatewayID / ServiceID: the SPIFFE IDs of meshd's roles.
//   - Manager: a node's identity. It implements go-spiffe's x509svid.Source
//     and x509bundle.Source; either it holds the CA key and mints its own
//     short-lived SVID, renewing it at half-life, or it is given a
//     certificate and key file (from `meshd ca issue`) and reloads them when
//     they change, or it reads SVID and trust bundle from a SPIRE agent's
//     Workload API (SPIFFESocket) and follows the agent's rotations.
//     Every tls.Config it builds asks it for the SVID on each
//     handshake, so a renewal reaches new connections without restarting a
//     listener and without touching open connections.
//   - Manager.ServerTLS / Manager.ClientTLS / PeerID: the mTLS configs.
//     Verification is go-spiffe's (tlsconfig with x509svid and x509bundle
//     sources and authorizers; x509svid.Verify's result is remembered per
//     presented chain and bundle value); nothing here verifies certificates
//     by hand.
//   - PublicCerts / InternalRoot: the certificates of the edge's public
//     listener, from PEM files (chosen by SNI, reloaded on Reload and on
//     change, OCSP-stapled when the certificate names a responder), from an
//     internal CA of the node (a key of its own, never the SPIFFE CA) that
//     issues on demand, or from an ACME CA through certmagic (on-demand,
//     HTTP-01 and TLS-ALPN-01). Internal and ACME issuance happen only for
//     names the Allow callback accepts, so arbitrary SNI gets nothing. A
//     client without SNI, or with a name that has no certificate, gets the
//     default certificate (the first pair, or one for DefaultCertName that
//     verifies for no real host) and a handshake, never internal_error.
//     PublicCerts.TLSConfig is the public policy: TLS 1.3 preferred, TLS 1.2
//     with ECDHE AEAD suites only, ALPN h2 and http/1.1, session tickets on.
//
// Sessions between mesh hops resume (resume.go): the server issues tickets
// under keys the Manager rotates (TicketKeyRotation), each ClientTLS config
// keeps a small session cache of its own, and every resumed handshake
// re-authorizes the peer, because crypto/tls skips VerifyPeerCertificate,
// where go-spiffe's authorizer runs, on resumed sessions. A ticket records
// the peer's SPIFFE ID, the roots its chain verified against and when the
// chain expires; it is accepted only while that root is still in the
// current trust bundle, no certificate of the chain has expired and the
// authorizer still accepts the ID, otherwise the handshake is a full one.
// VerifyConnection then verifies the chain restored from the session
// again, on both sides.
package tlsmgr
