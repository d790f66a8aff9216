package ops

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Budgets is a bounded table of per-source rate limits, the one rule behind
// the signer's per-source connection rate and the JWKS endpoint's request
// rate. A source is an IPv4 address or an IPv6 /64 (one host's usual
// allocation: an attacker holding a /64 gets one budget, not 2^64). At most
// max sources are tracked: when the table is full, sources whose budget has
// refilled are forgotten, and if every tracked source is still spending a
// new one is refused instead of the table growing.
type Budgets struct {
	limit rate.Limit
	burst int
	max   int

	mu sync.Mutex
	m  map[netip.Addr]*rate.Limiter
}

// NewBudgets allows each source perSecond with bursts of burst, tracking at
// most max sources.
func NewBudgets(perSecond float64, burst, max int) *Budgets {
	return &Budgets{limit: rate.Limit(perSecond), burst: max1(burst), max: max1(max), m: map[netip.Addr]*rate.Limiter{}}
}

func max1(n int) int { return max(n, 1) }

// Source is the unit a budget is kept for: the address itself for IPv4 (and
// IPv4-mapped IPv6), its /64 for IPv6.
func Source(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// Take spends one token of a's source. It returns 0 when allowed, else how
// long until the source may try again.
func (b *Budgets) Take(a netip.Addr) time.Duration {
	src := Source(a)
	b.mu.Lock()
	lim, ok := b.m[src]
	if !ok {
		if len(b.m) >= b.max {
			for s, l := range b.m {
				if l.Tokens() >= float64(b.burst) {
					delete(b.m, s)
				}
			}
		}
		if len(b.m) >= b.max {
			b.mu.Unlock()
			return time.Second
		}
		lim = rate.NewLimiter(b.limit, b.burst)
		b.m[src] = lim
	}
	b.mu.Unlock()
	res := lim.Reserve()
	if d := res.Delay(); d > 0 {
		res.Cancel()
		return d
	}
	return 0
}

// Len is the number of sources tracked.
func (b *Budgets) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}
