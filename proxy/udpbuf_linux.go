package proxy

import (
	"net"
	"syscall"
)

// growUDPBuffers gives a UDP socket udpSocketBuffer bytes to receive and
// send into, so a burst that arrives while meshd's goroutine waits for a
// core is queued, not dropped by the kernel: SO_RCVBUFFORCE and
// SO_SNDBUFFORCE where meshd may (CAP_NET_ADMIN: past net.core.rmem_max),
// else as much as the system allows.
func growUDPBuffers(uc *net.UDPConn) {
	_ = uc.SetReadBuffer(udpSocketBuffer)
	_ = uc.SetWriteBuffer(udpSocketBuffer)
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, udpSocketBuffer)
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, udpSocketBuffer)
	})
}
