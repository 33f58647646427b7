//go:build linux

package bgp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// BindAddrs assigns each prefix's address to the interface ifname, as
// `ip addr add 198.51.100.10/32 dev lo` does, so the host accepts traffic
// for the anycast address it announces. Each prefix must be a single
// address (/32 or /128). The addresses are then the caller's to manage: one
// already on the interface (left by a run that crashed) is taken over, and
// unbind removes them all. Needs CAP_NET_ADMIN.
func BindAddrs(ifname string, prefixes []netip.Prefix) (unbind func() error, err error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", ifname, err)
	}
	var added []netip.Prefix
	unbind = func() error {
		var errs []error
		for _, p := range added {
			if err := addrOp(unix.RTM_DELADDR, 0, ifi.Index, p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s from %s: %w", p, ifname, err))
			}
		}
		added = nil
		return errors.Join(errs...)
	}
	for _, p := range prefixes {
		if !p.IsSingleIP() {
			_ = unbind()
			return nil, fmt.Errorf("%s is not a single address (/32 or /128): which one would be bound?", p)
		}
		err := addrOp(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifi.Index, p)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			_ = unbind()
			return nil, fmt.Errorf("add %s to %s: %w", p, ifname, err)
		}
		added = append(added, p)
	}
	return unbind, nil
}

// addrOp sends one RTM_NEWADDR or RTM_DELADDR request for p on the
// interface with index ifindex and waits for the kernel's answer.
func addrOp(op uint16, flags uint16, ifindex int, p netip.Prefix) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	addr := p.Addr().AsSlice()
	family := uint8(unix.AF_INET)
	if p.Addr().Is6() {
		family = unix.AF_INET6
	}
	ne := binary.NativeEndian
	msg := make([]byte, unix.SizeofNlMsghdr, 64)
	// struct ifaddrmsg: family, prefixlen, flags, scope, index.
	msg = append(msg, family, uint8(p.Bits()), 0, unix.RT_SCOPE_UNIVERSE)
	msg = ne.AppendUint32(msg, uint32(ifindex))
	for _, typ := range []uint16{unix.IFA_LOCAL, unix.IFA_ADDRESS} {
		n := unix.SizeofRtAttr + len(addr)
		msg = ne.AppendUint16(msg, uint16(n))
		msg = ne.AppendUint16(msg, typ)
		msg = append(msg, addr...)
		for len(msg)%unix.NLMSG_ALIGNTO != 0 {
			msg = append(msg, 0)
		}
	}
	const seq = 1
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], op)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	ne.PutUint32(msg[8:], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink answer")
			}
			if code := int32(ne.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
