package sidecar

import (
	"context"
	"errors"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// localCreds are the transport credentials of the sidecar's listeners: no
// TLS (the peer is in the same pod), but the kernel's word on who connected
// over the Unix socket (SO_PEERCRED), so callers can be checked by uid.
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
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return conn, info, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if cerr != nil {
		return nil, nil, cerr
	}
	info.UID, info.PID, info.HasCred = int(cred.Uid), int(cred.Pid), true
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

// callerOf returns the caller's PeerInfo.
func callerOf(ctx context.Context) (PeerInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerInfo{}, false
	}
	info, ok := p.AuthInfo.(PeerInfo)
	return info, ok
}
