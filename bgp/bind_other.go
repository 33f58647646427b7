//go:build !linux

package bgp

import (
	"errors"
	"net/netip"
)

// BindAddrs assigns anycast addresses to an interface; it is implemented
// on Linux only (netlink).
func BindAddrs(ifname string, prefixes []netip.Prefix) (unbind func() error, err error) {
	return nil, errors.New("anycast-bind is implemented on Linux only")
}
