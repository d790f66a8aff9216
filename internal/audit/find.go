package audit

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
)

// findWindow is how far around its time a request's entries are looked
// for: request ids carry the admission time, leaves are in commit order,
// and the two differ by a request's latency and the replicas' clock skew.
const findWindow = 5 * time.Second

// FindRequest returns the seq of the first entry of request id. The log
// keeps no index for it (an index costs every commit more than lookups
// save): request ids start with their time, so a binary search by that
// time finds the neighbourhood and a scan of it the entry. The error wraps
// signerr.ErrKeyNotFound when the request is not in the (unpruned) log.
func FindRequest(ctx context.Context, s Store, id auditlog.RequestID) (uint64, error) {
	pruned, err := s.PrunedUpTo(ctx)
	if err != nil {
		return 0, err
	}
	size, err := s.AuditSize(ctx)
	if err != nil {
		return 0, err
	}
	from := id.Time().Add(-findWindow)
	leafTime := func(i uint64) (time.Time, error) {
		l, err := s.Leaves(ctx, i, i+1)
		if err != nil {
			return time.Time{}, err
		}
		return requestTime(l[0])
	}
	lo, hi := pruned, size // leaf indexes
	for lo < hi {
		mid := lo + (hi-lo)/2
		t, err := leafTime(mid)
		if err != nil {
			return 0, err
		}
		if t.Before(from) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	until := id.Time().Add(findWindow)
	const page = 1024
	for i := lo; i < size; i += page {
		leaves, err := s.Leaves(ctx, i, min(size, i+page))
		if err != nil {
			return 0, err
		}
		for j, l := range leaves {
			if len(l) > len(id) && bytes.Equal(l[1:1+len(id)], id[:]) {
				return i + uint64(j) + 1, nil
			}
			if t, err := requestTime(l); err == nil && t.After(until) {
				return 0, fmt.Errorf("audit: request %s: %w", id, signerr.ErrKeyNotFound)
			}
		}
	}
	return 0, fmt.Errorf("audit: request %s: %w", id, signerr.ErrKeyNotFound)
}

// requestTime reads the time in a leaf's request id without decoding the
// rest.
func requestTime(leaf []byte) (time.Time, error) {
	var id auditlog.RequestID
	if len(leaf) < 1+len(id) || leaf[0] < 1 || leaf[0] > auditlog.LeafVersion {
		return time.Time{}, fmt.Errorf("%w: leaf too short", ErrTreeBroken)
	}
	copy(id[:], leaf[1:])
	return id.Time(), nil
}
