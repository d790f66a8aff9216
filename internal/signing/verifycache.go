package signing

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// verifyEvery is how often AuditService.Verify replays the whole log at
// most; callers within it get the last replay's result (with its time).
const verifyEvery = time.Minute

// verifyTimeout bounds one replay (ten million entries take about 25 s).
const verifyTimeout = 10 * time.Minute

// verifyCache bounds full replays: one at a time, shared by every caller
// waiting for it, and at most one per verifyEvery, so no auditor (or many)
// can make the signer replay its log in a loop. A replay runs on its own
// context: a caller that gives up does not cancel it for the others.
type verifyCache struct {
	run func(context.Context) (*signerv1.VerifyAuditResponse, error)
	now func() time.Time

	mu       sync.Mutex
	last     *signerv1.VerifyAuditResponse
	inflight chan struct{}
	err      error
}

func newVerifyCache(run func(context.Context) (*signerv1.VerifyAuditResponse, error)) *verifyCache {
	return &verifyCache{run: run, now: time.Now}
}

func (c *verifyCache) get(ctx context.Context) (*signerv1.VerifyAuditResponse, error) {
	c.mu.Lock()
	if c.last != nil && c.now().Sub(c.last.CheckedAt.AsTime()) < verifyEvery {
		r := proto.Clone(c.last).(*signerv1.VerifyAuditResponse)
		c.mu.Unlock()
		return r, nil
	}
	done := c.inflight
	if done == nil {
		done = make(chan struct{})
		c.inflight = done
		go c.replay(done)
	}
	c.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	return proto.Clone(c.last).(*signerv1.VerifyAuditResponse), nil
}

func (c *verifyCache) replay(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	at := c.now()
	r, err := c.run(ctx)
	c.mu.Lock()
	if err == nil {
		r.CheckedAt = timestamppb.New(at)
		c.last = r
	}
	c.err, c.inflight = err, nil
	c.mu.Unlock()
	close(done)
}
