package mesh

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Signed gossip records. The gossip key is the first gate: without it a
// node cannot join. Beyond it, every record a node publishes is signed
// with the private key of its SVID and carries the SVID's certificate
// chain, and peers believe a record only when
//
//   - the chain verifies against their trust bundle now (an expired or
//     foreign SVID signs nothing),
//   - the signature covers the record and its signing time,
//   - what the record claims fits the identity: an edge record is
//     spiffe://TD/edge/NAME, a gateway's spiffe://TD/gateway/REGION/NAME
//     (only a gateway may publish a region's summary), a sidecar's
//     spiffe://TD/service/SERVICE announcing that one service only;
//   - it is not older than a record the node already accepted for that
//     member in that pool (a replayed old record changes nothing).
//
// A record that fails is dropped, logged once per member and reason and
// counted (meshd_gossip_records_refused_total); the node keeps gossiping.
// So a holder of the gossip key and of a valid SVID for api cannot
// announce instances of web, mark a gateway draining, or point a service
// elsewhere.
//
// A node signs again when its record or its SVID changes, so the record's
// bytes do not churn in gossip.

const recordSigContext = "meshd gossip record v1\x00"

// The envelope in gossip is binary, so that a signed record still fits
// one gossip packet (about 1,100 bytes; a bigger record travels by request
// over TCP, seconds later): the signature and a P-256 SVID add about 560
// bytes to the record's JSON, where JSON and base64 would add 800.
//
//	0x53 'S', 0x01 (version), signing time (8 bytes, Unix ns, big endian),
//	uvarint length + record JSON, uvarint length + signature,
//	one byte: number of certificates, each uvarint length + DER (leaf first)
const (
	recordMagic    = 0x53
	recordVersion1 = 0x01
)

func recordMessage(rec []byte, at int64) []byte {
	m := make([]byte, 0, len(recordSigContext)+8+len(rec))
	m = append(m, recordSigContext...)
	m = binary.BigEndian.AppendUint64(m, uint64(at))
	return append(m, rec...)
}

// signRecord wraps rec, signed at at with svid's key.
func signRecord(rec []byte, at time.Time, svid *x509svid.SVID) ([]byte, error) {
	if svid == nil || svid.PrivateKey == nil || len(svid.Certificates) == 0 {
		return nil, errors.New("no SVID to sign the record with")
	}
	atNS := at.UnixNano()
	msg := recordMessage(rec, atNS)
	var sig []byte
	var err error
	switch svid.PrivateKey.Public().(type) {
	case ed25519.PublicKey:
		sig, err = svid.PrivateKey.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		h := sha256.Sum256(msg)
		sig, err = svid.PrivateKey.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("sign the record: %w", err)
	}
	if len(svid.Certificates) > maxRecordChain {
		return nil, fmt.Errorf("an SVID chain of %d certificates, over %d", len(svid.Certificates), maxRecordChain)
	}
	n := 2 + 8 + 2*binary.MaxVarintLen64 + len(rec) + len(sig) + 1
	for _, c := range svid.Certificates {
		n += binary.MaxVarintLen64 + len(c.Raw)
	}
	b := make([]byte, 0, n)
	b = append(b, recordMagic, recordVersion1)
	b = binary.BigEndian.AppendUint64(b, uint64(atNS))
	b = binary.AppendUvarint(b, uint64(len(rec)))
	b = append(b, rec...)
	b = binary.AppendUvarint(b, uint64(len(sig)))
	b = append(b, sig...)
	b = append(b, byte(len(svid.Certificates)))
	for _, c := range svid.Certificates {
		b = binary.AppendUvarint(b, uint64(len(c.Raw)))
		b = append(b, c.Raw...)
	}
	return b, nil
}

// parseEnvelope splits a signed record; every length is checked against
// what is left.
func parseEnvelope(raw []byte) (rec []byte, at int64, sig []byte, chain [][]byte, err error) {
	bad := errors.New("not a signed record")
	if len(raw) < 10 || raw[0] != recordMagic || raw[1] != recordVersion1 {
		return nil, 0, nil, nil, bad
	}
	at = int64(binary.BigEndian.Uint64(raw[2:10]))
	rest := raw[10:]
	field := func() []byte {
		l, k := binary.Uvarint(rest)
		if k <= 0 || l > uint64(len(rest)-k) {
			err = bad
			return nil
		}
		f := rest[k : k+int(l)]
		rest = rest[k+int(l):]
		return f
	}
	rec = field()
	sig = field()
	if err != nil || len(rest) < 1 {
		return nil, 0, nil, nil, bad
	}
	nc := int(rest[0])
	rest = rest[1:]
	if nc == 0 || nc > maxRecordChain {
		return nil, 0, nil, nil, fmt.Errorf("chain of %d certificates", nc)
	}
	for range nc {
		c := field()
		if err != nil {
			return nil, 0, nil, nil, bad
		}
		chain = append(chain, c)
	}
	if len(rest) != 0 {
		return nil, 0, nil, nil, bad
	}
	return rec, at, sig, chain, nil
}

// maxRecordChain bounds the certificates of a record's chain.
const maxRecordChain = 4

// openRecord verifies a signed record against roots at now and returns the
// record's JSON, its signing time and the signer's SPIFFE ID.
func openRecord(raw []byte, roots *x509.CertPool, now time.Time) (rec []byte, at int64, id string, notAfter time.Time, err error) {
	rec, at, id, notAfter, _, err = openRecordRoot(raw, roots, now)
	return rec, at, id, notAfter, err
}

// openRecordRoot is openRecord that also returns the root of roots the
// signer's chain verified to.
func openRecordRoot(raw []byte, roots *x509.CertPool, now time.Time) (rec []byte, at int64, id string, notAfter time.Time, root *x509.Certificate, err error) {
	rec, at, sig, chain, err := parseEnvelope(raw)
	if err != nil {
		return nil, 0, "", time.Time{}, nil, err
	}
	if t := time.Unix(0, at); t.After(now.Add(5 * time.Minute)) {
		return nil, 0, "", time.Time{}, nil, fmt.Errorf("signed at %s, in the future", t.UTC().Format(time.RFC3339))
	}
	certs := make([]*x509.Certificate, 0, len(chain))
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, 0, "", time.Time{}, nil, fmt.Errorf("chain: %w", err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	leaf := certs[0]
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, 0, "", time.Time{}, nil, fmt.Errorf("chain not to the bundle: %w", err)
	}
	svid, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, 0, "", time.Time{}, nil, fmt.Errorf("not an SVID: %w", err)
	}
	msg := recordMessage(rec, at)
	ok := false
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(pub, h[:], sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(pub, msg, sig)
	case *rsa.PublicKey:
		h := sha256.Sum256(msg)
		ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, h[:], sig) == nil
	}
	if !ok {
		return nil, 0, "", time.Time{}, nil, errors.New("bad signature")
	}
	chain0 := chains[0]
	return rec, at, svid.String(), leaf.NotAfter, chain0[len(chain0)-1], nil
}

// claimsFit reports whether what r claims may come from identity id of
// trust domain td.
func claimsFit(r *NodeRecord, id, td string) error {
	var want string
	switch r.Role {
	case RoleEdge:
		want = "spiffe://" + td + "/edge/" + r.Name
	case RoleGateway:
		want = "spiffe://" + td + "/gateway/" + r.Region + "/" + r.Name
	case RoleSidecar:
		for _, s := range r.Services {
			if id != "spiffe://"+td+"/service/"+s.Name {
				return fmt.Errorf("%s may not announce service %s", id, s.Name)
			}
		}
		if len(r.Services) > 1 {
			return fmt.Errorf("a sidecar record announces %d services", len(r.Services))
		}
		if len(r.Global) > 0 {
			return errors.New("only a gateway publishes global counts")
		}
		return nil
	}
	if id != want {
		return fmt.Errorf("%s may not publish the record of %s %s", id, r.Role, r.Name)
	}
	return nil
}
