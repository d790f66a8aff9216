package identity

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/plexsphere/signer/internal/config"
)

// Open returns the source the settings select: the Workload API when
// WorkloadAPIAddr is set, otherwise the three files. With the Workload API it
// waits (up to ctx) for the first SVID.
func Open(ctx context.Context, c config.Identity, log *slog.Logger) (Source, error) {
	if c.WorkloadAPIAddr != "" {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(c.WorkloadAPIAddr)))
		if err != nil {
			return nil, fmt.Errorf("identity: workload API %s: %w", c.WorkloadAPIAddr, err)
		}
		return src, nil
	}
	return NewFileSource(c.SVIDCertFile, c.SVIDKeyFile, c.TrustBundleFile, c.IdentityReload, log)
}
