package keyring

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/store"
)

// Schedule is one scope's automatic rotation: a new key is opened Period
// after the ACTIVE key was activated, less PrePublish; it is committed once
// published for PrePublish; keys PREVIOUS for VerifyOnly are retired.
type Schedule struct {
	Scope                          string
	Period, PrePublish, VerifyOnly time.Duration
}

// Locker is implemented by stores shared between replicas: fn runs only if
// the named lock could be taken, so one replica at a time rotates.
type Locker interface {
	TryLock(ctx context.Context, name string, fn func(context.Context) error) (ran bool, err error)
}

// AutoRotator drives Schedules. Every step goes through the same rules as
// the operator's RPCs (one PENDING key, windows, one ACTIVE key), so even
// two rotators racing cannot break the lifecycle; the lock only avoids the
// refused duplicates. Each step is audited like an RPC, Relation "rotate".
type AutoRotator struct {
	rot       *Lifecycle
	sink      audit.Sink
	schedules []Schedule
	outcome   Outcome
	log       *slog.Logger
}

// Outcome is how an error is audited (reason, and the gRPC code name an
// RPC with it would get): the one table in internal/signing, handed in so
// that this package stays off the wire.
type Outcome func(err error) (reason, code string)

// NewAutoRotator rotates with rot and audits to sink, each step's outcome
// as outcome classifies it.
func NewAutoRotator(rot *Lifecycle, sink audit.Sink, schedules []Schedule, outcome Outcome, log *slog.Logger) *AutoRotator {
	if log == nil {
		log = slog.Default()
	}
	return &AutoRotator{rot: rot, sink: sink, schedules: schedules, outcome: outcome, log: log}
}

// Run ticks every interval until ctx ends.
func (a *AutoRotator) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := a.Tick(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("automatic rotation", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick takes every step that is due now, under the store's lock if it has
// one.
func (a *AutoRotator) Tick(ctx context.Context) error {
	if l, ok := a.rot.store.(Locker); ok {
		_, err := l.TryLock(ctx, "plexsphere-signer/auto-rotate", a.tick)
		return err
	}
	return a.tick(ctx)
}

func (a *AutoRotator) tick(ctx context.Context) error {
	var errs []error
	for _, s := range a.schedules {
		if err := a.step(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (a *AutoRotator) step(ctx context.Context, s Schedule) error {
	keys, err := a.rot.store.Keys(ctx, s.Scope)
	if err != nil {
		return err
	}
	now := a.rot.now().UTC()
	var active, pending *store.Key
	for i := range keys {
		k := &keys[i]
		switch k.State {
		case store.Active:
			active = k
		case store.Pending:
			pending = k
		case store.Previous:
			if !now.Before(k.DeactivatedAt.Add(s.VerifyOnly)) {
				_, err := a.rot.TransitionWithin(ctx, store.OpRetire, s.Scope, k.ID, a.windows(s))
				a.record(ctx, "retire", s.Scope, k.ID, err)
			}
		}
	}
	switch {
	case pending != nil && !now.Before(pending.CreatedAt.Add(s.PrePublish)):
		_, err := a.rot.TransitionWithin(ctx, store.OpCommit, s.Scope, pending.ID, a.windows(s))
		a.record(ctx, "commit", s.Scope, pending.ID, err)
	case pending == nil && (active == nil || !now.Before(active.ActivatedAt.Add(s.Period-s.PrePublish))):
		k, err := a.rot.Open(ctx, s.Scope)
		a.record(ctx, "open", s.Scope, k.ID, err)
	}
	return nil
}

// windows are the schedule's own windows, never shorter than the signer's:
// the store checks them inside the transaction, so the decision taken on the
// keys listed above is only a hint.
func (a *AutoRotator) windows(s Schedule) Windows {
	return Windows{PrePublish: max(s.PrePublish, a.rot.windows.PrePublish), VerifyOnly: max(s.VerifyOnly, a.rot.windows.VerifyOnly)}
}

// record audits one automatic step; a step another replica won is not an
// error worth more than the audit line.
func (a *AutoRotator) record(ctx context.Context, step, scope, keyID string, err error) {
	reason, code := a.outcome(err)
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationRotate, "auto-rotate/"+step, a.rot.now())
	e.Object, e.Reason, e.Code = auditlog.Object(scope, keyID), reason, code
	if werr := a.sink.Submit(ctx, audit.LaneAdmitted, e).Wait(ctx); werr != nil {
		a.log.Error("automatic rotation step not audited", "step", step, "scope", scope, "key_id", keyID, "err", werr)
	}
	if err != nil {
		a.log.Warn("automatic rotation step refused", "step", step, "scope", scope, "key_id", keyID, "err", err)
		return
	}
	a.log.Info("automatic rotation", "step", step, "scope", scope, "key_id", keyID)
}
