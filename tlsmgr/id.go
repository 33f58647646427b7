package tlsmgr

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// EdgeID returns the SPIFFE ID of an edge node: spiffe://<td>/edge/<node>.
func EdgeID(td, node string) (string, error) {
	return meshID(td, "edge", seg{"node", node})
}

// GatewayID returns the SPIFFE ID of a gateway node:
// spiffe://<td>/gateway/<region>/<node>.
func GatewayID(td, region, node string) (string, error) {
	return meshID(td, "gateway", seg{"region", region}, seg{"node", node})
}

// ServiceID returns the SPIFFE ID shared by all sidecars of a service:
// spiffe://<td>/service/<service>.
func ServiceID(td, service string) (string, error) {
	return meshID(td, "service", seg{"service", service})
}

type seg struct{ what, value string }

// meshID builds spiffe://<td>/<kind>/<segments...>. meshd's segments are
// narrower than the SPIFFE ID standard §2.2 allows (no upper case), because
// they double as node, region and service names in gossip and DNS-like
// service names ("web.mesh"), where case must not create two names for one
// thing.
func meshID(td, kind string, segs ...seg) (string, error) {
	t, err := parseTrustDomain(td)
	if err != nil {
		return "", err
	}
	parts := []string{kind}
	for _, s := range segs {
		if err := checkSegment(s.value); err != nil {
			return "", fmt.Errorf("invalid %s %q: %w", s.what, s.value, err)
		}
		parts = append(parts, s.value)
	}
	id, err := spiffeid.FromSegments(t, parts...)
	if err != nil {
		return "", fmt.Errorf("build %s id: %w", kind, err)
	}
	return id.String(), nil
}

func checkSegment(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if s == "." || s == ".." {
		return fmt.Errorf("must not be a dot segment")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("character %q at %d: only a-z, 0-9, '.', '_' and '-' are allowed", c, i)
		}
	}
	return nil
}
