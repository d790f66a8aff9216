// Package lograte keeps a repeated log line to once per interval per key
// (a handshake failure cause, say), counting what it held back, so that a
// client retrying every 100 ms cannot flood the log while the first
// occurrence of each cause is still logged at once.
package lograte

import (
	"sync"
	"time"
)

// Limiter allows one line per key per interval.
type Limiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*state
}

type state struct {
	next       time.Time
	suppressed int
}

// New returns a limiter allowing one line per key every interval. The key
// set must be bounded (causes, not addresses).
func New(every time.Duration) *Limiter {
	return &Limiter{every: every, now: time.Now, keys: map[string]*state{}}
}

// Allow reports whether a line for key may be logged now and, if so, how
// many were held back since the last one.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.keys[key]
	if s == nil {
		s = &state{}
		l.keys[key] = s
	}
	now := l.now()
	if now.Before(s.next) {
		s.suppressed++
		return false, 0
	}
	n := s.suppressed
	s.next, s.suppressed = now.Add(l.every), 0
	return true, n
}
