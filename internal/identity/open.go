package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/plexsphere/signer/internal/config"
)

// ErrNoSVID: the Workload API gave no SVID before the wait ended (the
// binary was stopped, or its context ran out).
var ErrNoSVID = errors.New("identity: no SVID arrived from the SPIFFE Workload API")

// WaitWarnEvery is how often a binary waiting for its first SVID says so.
var WaitWarnEvery = 5 * time.Second

// Open returns the source the settings select: the Workload API when
// WorkloadAPIAddr is set, otherwise the three files. With the Workload API it
// waits (up to ctx) for the first SVID.
func Open(ctx context.Context, c config.Identity, log *slog.Logger) (Source, error) {
	return OpenAs(ctx, c, "", log)
}

// OpenAs is Open for a binary whose Workload API address setting is called
// setting: while no SVID has arrived it logs a warning every WaitWarnEvery
// naming the address, the setting, the Workload API's last error and the
// likely fix. A wait that ends without an SVID is ErrNoSVID.
func OpenAs(ctx context.Context, c config.Identity, setting string, log *slog.Logger) (Source, error) {
	if log == nil {
		log = slog.Default()
	}
	if c.WorkloadAPIAddr == "" {
		return NewFileSource(c.SVIDCertFile, c.SVIDKeyFile, c.TrustBundleFile, c.IdentityReload, log)
	}
	wl := &apiLog{log: log}
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(WaitWarnEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				last := wl.last()
				log.Warn("no SVID from the SPIFFE Workload API yet; still waiting (liveness is served, readiness stays false)",
					"addr", c.WorkloadAPIAddr, "setting", setting, "waited", time.Since(start).Round(time.Second),
					"last_error", last, "hint", waitHint(last, setting))
			}
		}
	}()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(c.WorkloadAPIAddr), workloadapi.WithLogger(wl)))
	close(done)
	wg.Wait()
	if err != nil {
		last := wl.last()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w from %s in %v (last error: %s): %s", ErrNoSVID, c.WorkloadAPIAddr, time.Since(start).Round(time.Second), orNone(last), waitHint(last, setting))
		}
		return nil, fmt.Errorf("identity: workload API %s: %w", c.WorkloadAPIAddr, err)
	}
	if waited := time.Since(start); waited >= WaitWarnEvery {
		log.Info("SVID arrived from the SPIFFE Workload API", "addr", c.WorkloadAPIAddr, "waited", waited.Round(time.Millisecond))
	}
	wl.settle()
	return src, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// waitHint names the likely fix for the Workload API's last error: a
// socket nobody listens at is a path or mount mistake; an agent that
// answers but issues nothing has no registration entry matching the
// workload.
func waitHint(last, setting string) string {
	if setting == "" {
		setting = "the Workload API address"
	}
	switch {
	case strings.Contains(last, "no such file"), strings.Contains(last, "connection refused"), strings.Contains(last, "permission denied"):
		return "nothing answers at the socket: check " + setting + " and that the SPIRE agent's socket is mounted into this container and readable"
	case strings.Contains(last, "PermissionDenied"), strings.Contains(last, "no identity issued"):
		return "the SPIRE agent knows no registration entry for this workload: create one whose parent is this node's agent and whose selectors match this pod (e.g. k8s:ns and k8s:sa); spire-server entry show lists them"
	}
	return "check " + setting + " (the SPIRE agent's socket), that the agent runs on this node, and that a registration entry's selectors match this workload (spire-server entry show)"
}

// apiLog receives go-spiffe's Workload API client logs: their last error
// feeds the wait warnings; all of them are debug lines.
type apiLog struct {
	log     *slog.Logger
	mu      sync.Mutex
	lastErr string
	settled bool
}

func (a *apiLog) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

func (a *apiLog) settle() {
	a.mu.Lock()
	a.settled = true
	a.mu.Unlock()
}

func (a *apiLog) Debugf(format string, args ...any) {
	a.log.Debug("workload API: " + fmt.Sprintf(format, args...))
}
func (a *apiLog) Infof(format string, args ...any) { a.Debugf(format, args...) }
func (a *apiLog) Warnf(format string, args ...any) { a.Errorf(format, args...) }

// Errorf: before the first SVID, the last error is kept for the wait
// warnings; after it, a lost Workload API is worth a warning (the SVID in
// hand keeps serving until it expires).
func (a *apiLog) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	a.mu.Lock()
	a.lastErr = msg
	settled := a.settled
	a.mu.Unlock()
	if settled {
		a.log.Warn("workload API: "+msg, "hint", "the current SVID keeps serving until it expires; is the SPIRE agent running?")
		return
	}
	a.log.Debug("workload API: " + msg)
}
