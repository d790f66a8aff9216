package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

var discardLog = slog.New(slog.DiscardHandler)

// testLifecycleRace drives the real control plane (keyring.Lifecycle, which
// RotationService serves, and an AutoRotator) from many goroutines at once against the store: Open, Commit,
// Retire and Abort of every key in sight, racing automatic rotation, while a
// reader checks that the scope never has two ACTIVE keys.
//
// The clock stands still and the verify-only window is an hour, so no key
// that was ever demoted (ACTIVE → PREVIOUS) may become RETIRED: a RETIRED key
// with a DeactivatedAt is a skipped window. Before the windows were checked
// inside the store transaction, a Retire that read the key while it was
// still ACTIVE skipped the check, and a Commit racing it demoted the key just
// before the store retired it.
func testLifecycleRace(t *testing.T, s store.Store) {
	ctx := context.Background()
	const scope = "race"
	kek := make([]byte, 32)
	rand.Read(kek)
	p, err := local.New(kek)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return t0 }
	w := audit.NewWriter(s, audit.WriterOptions{})
	defer w.Close()
	kr := keyring.New(s, p, 0, now)
	rot := keyring.NewLifecycle(s, p, kr, keyring.Windows{PrePublish: 0, VerifyOnly: time.Hour}, now)
	if _, _, err := rot.Bootstrap(ctx, scope, w); err != nil {
		t.Fatal(err)
	}
	outcome := func(err error) (string, string) {
		if err != nil {
			return auditlog.ReasonCaveatViolation, "FailedPrecondition"
		}
		return auditlog.ReasonGranted, "OK"
	}
	auto := keyring.NewAutoRotator(rot, w, []keyring.Schedule{{Scope: scope, Period: time.Nanosecond, PrePublish: 0, VerifyOnly: time.Hour}}, outcome, discardLog)

	var (
		stop      atomic.Bool
		twoActive atomic.Int64
		wg        sync.WaitGroup
		errMu     sync.Mutex
		unexpect  []error
	)
	fail := func(err error) {
		errMu.Lock()
		unexpect = append(unexpect, err)
		errMu.Unlock()
	}
	// Refusals are the point of the race; anything else is a bug.
	expected := func(err error) bool {
		if err == nil {
			return true
		}
		for _, e := range []error{signerr.ErrRotationInProgress, signerr.ErrKeyActive, signerr.ErrKeyRetired,
			signerr.ErrRotationNotReady, signerr.ErrKeyNotFound} {
			if errors.Is(err, e) {
				return true
			}
		}
		return false
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := s.ActiveKey(ctx, scope); errors.Is(err, signerr.ErrInvariant) {
				twoActive.Add(1)
			}
		}
	}()
	const workers, rounds = 6, 40
	var work sync.WaitGroup
	for g := range workers {
		work.Add(1)
		go func() {
			defer work.Done()
			for i := range rounds {
				if g == 0 {
					if err := auto.Tick(ctx); err != nil && !expected(err) {
						fail(fmt.Errorf("auto-rotate: %w", err))
					}
					continue
				}
				keys, err := s.Keys(ctx, scope)
				if err != nil {
					fail(err)
					return
				}
				if (g+i)%3 == 0 {
					if _, err := rot.Open(ctx, scope); !expected(err) {
						fail(fmt.Errorf("open: %w", err))
					}
				}
				for _, k := range keys {
					req := k.ID
					var err error
					switch (g + i + len(k.ID)) % 4 {
					case 0, 1:
						_, err = rot.Transition(ctx, store.OpRetire, scope, req)
					case 2:
						_, err = rot.Transition(ctx, store.OpCommit, scope, req)
					case 3:
						if i%5 == 0 {
							_, err = rot.Transition(ctx, store.OpAbort, scope, req)
						} else {
							_, err = rot.Transition(ctx, store.OpCommit, scope, req)
						}
					}
					if !expected(err) {
						fail(fmt.Errorf("%s: %w", req, err))
					}
				}
			}
		}()
	}
	work.Wait()
	stop.Store(true)
	wg.Wait()

	for _, err := range unexpect {
		t.Error(err)
	}
	if n := twoActive.Load(); n > 0 {
		t.Errorf("the scope had several ACTIVE keys %d times", n)
	}
	keys, err := s.Keys(ctx, scope)
	if err != nil {
		t.Fatal(err)
	}
	var skipped, demoted, active int
	for _, k := range keys {
		if !k.DeactivatedAt.IsZero() {
			demoted++
		}
		if k.State == store.Retired && !k.DeactivatedAt.IsZero() {
			skipped++
			t.Errorf("key %s retired %v after it was demoted; the verify-only window is 1h", k.ID, k.RetiredAt.Sub(k.DeactivatedAt))
		}
		if k.State == store.Active {
			active++
		}
	}
	if active != 1 {
		t.Errorf("%d ACTIVE keys at the end, want 1", active)
	}
	if demoted == 0 {
		t.Fatal("no key was ever demoted: the race did not exercise Commit")
	}
	t.Logf("%d keys, %d demoted, %d verify-only windows skipped", len(keys), demoted, skipped)
}
