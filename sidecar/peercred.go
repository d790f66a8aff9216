package sidecar

import (
	"context"
	"errors"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// localCreds are the transport credentials of the sidecar's listeners: no
// TLS (the peer is in the same pod). The caller's uid was read and checked
// when its connection was accepted (see guard); the handshake only passes
// that record on as the connection's AuthInfo.
type localCreds struct{}

// PeerInfo is the AuthInfo of a local caller.
type PeerInfo struct {
	credentials.CommonAuthInfo
	// UID and PID of the process that connected over the Unix socket;
	// HasCred is false for a loopback TCP caller.
	UID, PID int
	HasCred  bool
}

func (PeerInfo) AuthType() string { return "local" }

func (localCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := PeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	if lc, ok := conn.(*localConn); ok {
		info.UID, info.PID, info.HasCred = lc.uid, lc.pid, lc.hasCred
	}
	return conn, info, nil
}

func (localCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("sidecar: local credentials are server-side only")
}

func (localCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "local"}
}

func (c localCreds) Clone() credentials.TransportCredentials { return c }

func (localCreds) OverrideServerName(string) error { return nil }

// peerCred asks the kernel who is at the other end of a Unix socket
// (SO_PEERCRED: the connecting process's uid and pid, not forgeable by it).
func peerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}
