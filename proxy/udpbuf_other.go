//go:build !linux

package proxy

import "net"

// growUDPBuffers gives a UDP socket as much of udpSocketBuffer as the
// system allows.
func growUDPBuffers(uc *net.UDPConn) {
	_ = uc.SetReadBuffer(udpSocketBuffer)
	_ = uc.SetWriteBuffer(udpSocketBuffer)
}
