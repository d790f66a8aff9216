package keyring_test

import (
	"context"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
)

// discard is an audit sink that accepts everything at once.
type discard struct{}

func (discard) Submit(context.Context, audit.Lane, ...auditlog.Entry) *audit.Pending {
	return audit.Done()
}
