package sidecar

import "context"

// SetLookupHost replaces the resolver of dns:/// upstreams until the
// returned function restores it.
func SetLookupHost(f func(ctx context.Context, host string) ([]string, error)) (restore func()) {
	old := lookupHost
	lookupHost = f
	return func() { lookupHost = old }
}
