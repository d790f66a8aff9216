package identity

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Config selects a source: the Workload API when WorkloadAPIAddr is set,
// otherwise the three files.
type Config struct {
	WorkloadAPIAddr               string
	CertFile, KeyFile, BundleFile string
	Reload                        time.Duration
}

// Open returns the configured source. With the Workload API it waits (up to
// ctx) for the first SVID.
func Open(ctx context.Context, c Config, log *slog.Logger) (Source, error) {
	if c.WorkloadAPIAddr != "" {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(c.WorkloadAPIAddr)))
		if err != nil {
			return nil, fmt.Errorf("identity: workload API %s: %w", c.WorkloadAPIAddr, err)
		}
		return src, nil
	}
	return NewFileSource(c.CertFile, c.KeyFile, c.BundleFile, c.Reload, log)
}
