package ctl

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// requestIDHeader names an AuditService call's request id in its answer
// (internal/signing.RequestIDHeader).
const requestIDHeader = "plexsphere-request-id"

// maxOwnAge is how many polls an own request id is remembered when a
// filter hides one of its two entries.
const maxOwnAge = 1024

// tail is one audit tail: its filters and the request ids of its own
// calls (every AuditService call is itself audited: two entries sharing
// the id its answer names), left out of the output unless --include-own.
type tail struct {
	c          *cli
	a          signerv1.AuditServiceClient
	q          *signerv1.ListAuditRequest
	includeOwn bool
	own        map[string]ownCall
	poll       int
}

type ownCall struct{ seen, poll int }

func (t *tail) remember(md metadata.MD) {
	for _, id := range md.Get(requestIDHeader) {
		t.own[id] = ownCall{0, t.poll}
	}
}

// list is one List call after seq after, with the tail's own entries left
// out; last is the seq of the last entry the signer returned, own ones
// included (0 if none), full whether it returned a whole page.
func (t *tail) list(ctx context.Context, after uint64, limit int) (es []*signerv1.AuditEntry, last uint64, full bool, err error) {
	q := proto.CloneOf(t.q)
	q.AfterSeq, q.Limit = after, uint32(limit)
	var md metadata.MD
	cctx, cancel := t.c.call(ctx)
	r, err := t.a.List(cctx, q, grpc.Header(&md))
	cancel()
	if err != nil {
		return nil, 0, false, err
	}
	t.poll++
	for _, e := range r.Entries {
		last = e.Seq
		if o, mine := t.own[e.RequestId]; mine && !t.includeOwn {
			if o.seen >= 1 {
				delete(t.own, e.RequestId)
			} else {
				t.own[e.RequestId] = ownCall{o.seen + 1, o.poll}
			}
			continue
		}
		es = append(es, e)
	}
	for id, o := range t.own {
		if t.poll-o.poll > maxOwnAge {
			delete(t.own, id)
		}
	}
	t.remember(md)
	return es, last, len(r.Entries) == limit, nil
}

// size is the log's size now: a fresh checkpoint's (the one call that
// says where the log ends).
func (t *tail) size(ctx context.Context) (uint64, error) {
	var md metadata.MD
	cctx, cancel := t.c.call(ctx)
	defer cancel()
	r, err := t.a.Checkpoint(cctx, &signerv1.CheckpointRequest{}, grpc.Header(&md))
	if err != nil {
		return 0, err
	}
	t.remember(md)
	// Read for its size only: nothing is trusted from it (audit verify
	// checks checkpoints).
	lines := bytes.SplitN(r.Checkpoint, []byte("\n"), 3)
	if len(lines) < 3 {
		return 0, brokenError{"the signer's checkpoint is not a signed note"}
	}
	n, err := strconv.ParseUint(string(lines[1]), 10, 64)
	if err != nil {
		return 0, brokenError{fmt.Sprintf("the signer's checkpoint has no size: %q", lines[1])}
	}
	return n, nil
}

// from lists every entry after seq after to the end of the log, keeping
// the newest limit; next is where the end was.
func (t *tail) from(ctx context.Context, after uint64, limit int) (es []*signerv1.AuditEntry, matched int, next uint64, err error) {
	next = after
	for {
		page, last, full, err := t.list(ctx, next, auditPage)
		if err != nil {
			return nil, 0, 0, err
		}
		matched += len(page)
		es = append(es, page...)
		if len(es) > limit {
			es = es[len(es)-limit:]
		}
		if last > next {
			next = last
		}
		if !full {
			return es, matched, next, nil
		}
	}
}

// newest is the newest limit entries matching the filters, oldest first;
// older says whether earlier ones match too. Without filters one pass
// from the end back limit entries does; with filters the window back from
// the end grows until it holds limit matches or the whole log.
func (t *tail) newest(ctx context.Context, limit int) (es []*signerv1.AuditEntry, older bool, next uint64, err error) {
	end, err := t.size(ctx)
	if err != nil {
		return nil, false, 0, err
	}
	for window := uint64(limit); ; window *= 8 {
		start := uint64(0)
		if window < end {
			start = end - window
		}
		es, matched, next, err := t.from(ctx, start, limit)
		if err != nil {
			return nil, false, 0, err
		}
		if matched < limit && start > 0 {
			continue
		}
		older = matched > limit
		if !older && start > 0 && len(es) > 0 {
			// Matches before the window? The first one says.
			first, _, _, err := t.list(ctx, 0, 1)
			if err != nil {
				return nil, false, 0, err
			}
			older = len(first) > 0 && first[0].Seq < es[0].Seq
		}
		return es, older, next, nil
	}
}

func (c *cli) auditTail(ctx context.Context, args []string) error {
	fs := c.flagSet("audit tail", "[--limit N] [--after SEQ] [filters] [--follow [--every D] [--include-own]]",
		"Print the newest --limit audit entries matching the filters, oldest first (with --after, the first\n"+
			"--limit after that seq), and say on stderr when more exist. --follow then prints new entries as they\n"+
			"are committed until interrupted. Entries of this command's own calls (it reads the log too, and every\n"+
			"read is audited) are left out unless --include-own.")
	after := fs.Uint64("after", 0, "print the entries after this seq, oldest first, instead of the newest")
	limit := fs.Uint("limit", 100, "at most this many entries (then, with --follow, every new one)")
	subject := fs.String("subject", "", "exact subject")
	relation := fs.String("relation", "", "exact relation (connect, sign, public_key, rotate, audit_read, log, unknown)")
	reason := fs.String("reason", "", "exact reason (granted, insufficient_relation, caveat_violation)")
	prefix := fs.String("object-prefix", "", "object prefix, e.g. signing-key:payments:")
	follow := fs.Bool("follow", false, "then keep printing new entries until interrupted")
	every := fs.Duration("every", 2*time.Second, "poll interval with --follow")
	includeOwn := fs.Bool("include-own", false, "also print the entries of this command's own calls")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	if *limit == 0 || *every <= 0 {
		return usageError("audit tail: --limit and --every must be positive")
	}
	afterSet := false
	fs.Visit(func(f *flag.Flag) { afterSet = afterSet || f.Name == "after" })
	s, err := c.auditor(ctx, auditClient)
	if err != nil {
		return err
	}
	t := &tail{c: c, a: s.a, includeOwn: *includeOwn, own: map[string]ownCall{},
		q: &signerv1.ListAuditRequest{Subject: *subject, Relation: *relation, Reason: *reason, ObjectPrefix: *prefix}}
	n := int(min(*limit, 1<<20))
	var es []*signerv1.AuditEntry
	var more string
	var next uint64
	if afterSet {
		for next = *after; len(es) < n; {
			page, last, full, err := t.list(ctx, next, min(n-len(es), auditPage))
			if err != nil {
				return err
			}
			es = append(es, page...)
			if last > next {
				next = last
			}
			if !full {
				break
			}
		}
		if len(es) == n && !*follow {
			if page, _, _, err := t.list(ctx, next, 1); err == nil && len(page) > 0 {
				more = fmt.Sprintf("more entries follow seq %d: signerctl audit tail --after %d", es[len(es)-1].Seq, es[len(es)-1].Seq)
			}
		}
	} else {
		var older bool
		if es, older, next, err = t.newest(ctx, n); err != nil {
			return err
		}
		if older {
			more = fmt.Sprintf("older entries precede seq %d (these are the newest %d): --limit N for more, --after SEQ to read from SEQ", es[0].Seq, len(es))
		}
	}
	p := &entryPrinter{c: c}
	if *follow {
		// Columns start wide (the bounded ones at their widest: relation
		// audit_read, reason insufficient_relation, code
		// FailedPrecondition): later rows rarely widen a column.
		p.widths = []int{6, len("2006-01-02T15:04:05.000000Z"), 60, 10, 50, 21, 18, 0}
	}
	p.print(es, true)
	if more != "" {
		fmt.Fprintln(c.errw, "signerctl:", more)
	}
	if !*follow {
		return nil
	}
	if len(es) > 0 && es[len(es)-1].Seq > next {
		next = es[len(es)-1].Seq
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
		for {
			page, last, full, err := t.list(ctx, next, auditPage)
			if err != nil {
				return err
			}
			if last > next {
				next = last
			}
			p.print(page, false)
			if !full {
				break
			}
		}
	}
}

// entryPrinter prints entries as a table whose columns only widen: a
// --follow poll's rows line up with the ones before, and a poll with
// nothing new prints nothing.
type entryPrinter struct {
	c      *cli
	widths []int
}

var entryHeader = []string{"SEQ", "TIME", "SUBJECT", "RELATION", "OBJECT", "REASON", "CODE", "METHOD"}

func (p *entryPrinter) print(es []*signerv1.AuditEntry, header bool) {
	c := p.c
	if c.cfg.Output == "json" {
		for _, e := range es {
			c.json(toEntryJSON(e))
		}
		return
	}
	rows := make([][]string, 0, len(es)+1)
	if header {
		rows = append(rows, entryHeader)
	}
	for _, e := range es {
		rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), tableTime(e.Timestamp),
			e.Subject, e.Relation, e.Object, e.Reason, e.Code, e.Method})
	}
	if p.widths == nil {
		p.widths = make([]int, len(entryHeader))
	}
	for _, r := range rows {
		for i, cell := range r {
			p.widths[i] = max(p.widths[i], len(cell))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, cell := range r {
			if i == len(r)-1 {
				b.WriteString(cell) // the last column is not padded
				break
			}
			fmt.Fprintf(&b, "%-*s  ", p.widths[i], cell)
		}
		b.WriteByte('\n')
	}
	fmt.Fprint(c.out, b.String())
}
