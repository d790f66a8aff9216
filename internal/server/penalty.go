package server

import (
	"net/netip"
	"time"
)

// penalties is the bounded table of per-source strikes behind the
// source_penalised refusal: a token bucket per source that a denied
// connection spends (guard.strike) and that refills at rate up to burst. A
// source is on the table only once it has been struck; it leaves when its
// bucket is full again (on the next sweep). While a source has less than
// one strike left, its new connections are refused at accept.
//
// A bucket may go below zero, down to -burst: connections under way when
// it ran out still spend their strikes, and the source waits for them too.
// When the table is full of sources still refilling, a new source is not
// tracked: a penalty is a saving, never a reason to refuse a source that
// did nothing.
//
// Not safe for concurrent use: the guard holds its lock.
type penalties struct {
	rate, burst float64
	max         int
	now         func() time.Time
	m           map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newPenalties(rate, burst float64, max int, now func() time.Time) *penalties {
	return &penalties{rate: rate, burst: max1f(burst), max: max, now: now, m: map[netip.Addr]*bucket{}}
}

func max1f(f float64) float64 { return max(f, 1) }

// refill brings b up to date.
func (p *penalties) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(p.burst, b.tokens+d.Seconds()*p.rate)
	}
	b.at = now
}

// spent reports whether src has less than one strike left.
func (p *penalties) spent(src netip.Addr) bool {
	b := p.m[src]
	if b == nil {
		return false
	}
	p.refill(b, p.now())
	return b.tokens < 1
}

// charge spends a strike of src up front if src is on the table (a
// source struck lately), and reports whether it did.
func (p *penalties) charge(src netip.Addr) bool {
	b := p.m[src]
	if b == nil {
		return false
	}
	p.refill(b, p.now())
	b.tokens--
	return true
}

// refund gives back a strike charged up front.
func (p *penalties) refund(src netip.Addr) {
	if b := p.m[src]; b != nil {
		p.refill(b, p.now())
		b.tokens = min(p.burst, b.tokens+1)
	}
}

// take spends a strike of src, putting src on the table if it is not.
func (p *penalties) take(src netip.Addr) {
	now := p.now()
	b := p.m[src]
	if b == nil {
		if len(p.m) >= p.max {
			for s, o := range p.m {
				if p.refill(o, now); o.tokens >= p.burst {
					delete(p.m, s)
				}
			}
		}
		if len(p.m) >= p.max {
			return
		}
		b = &bucket{tokens: p.burst, at: now}
		p.m[src] = b
	}
	p.refill(b, now)
	b.tokens = max(b.tokens-1, -p.burst)
}
