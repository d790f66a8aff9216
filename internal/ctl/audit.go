package ctl

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/jwks"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// auditPage is the most entries the signer returns per List.
const auditPage = 1000

type entryJSON struct {
	Seq             uint64   `json:"seq"`
	Timestamp       *string  `json:"timestamp"`
	Subject         string   `json:"subject"`
	Relation        string   `json:"relation"`
	Object          string   `json:"object"`
	Reason          string   `json:"reason"`
	CaveatContext   []string `json:"caveat_context"`
	Method          string   `json:"method"`
	Code            string   `json:"code"`
	RequestID       string   `json:"request_id"`
	PayloadSHA256   string   `json:"payload_sha256,omitempty"`
	SignatureSHA256 string   `json:"signature_sha256,omitempty"`
	Leaf            []byte   `json:"leaf"`
}

func toEntryJSON(e *signerv1.AuditEntry) entryJSON {
	cav := e.CaveatContext
	if cav == nil {
		cav = []string{} // the contract: always an empty list, never null
	}
	return entryJSON{Seq: e.Seq, Timestamp: jsonTime(e.Timestamp), Subject: e.Subject, Relation: e.Relation,
		Object: e.Object, Reason: e.Reason, CaveatContext: cav, Method: e.Method, Code: e.Code, RequestID: e.RequestId,
		PayloadSHA256: e.PayloadSha256, SignatureSHA256: e.SignatureSha256, Leaf: e.Leaf}
}

// requestIDHeader names an AuditService call's request id in its answer
// (internal/signing.RequestIDHeader).
const requestIDHeader = "plexsphere-request-id"

func (c *cli) auditTail(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit tail", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	after := fs.Uint64("after", 0, "only entries with seq above this")
	limit := fs.Uint("limit", 100, "at most this many entries (per poll with --follow)")
	subject := fs.String("subject", "", "exact subject")
	relation := fs.String("relation", "", "exact relation (connect, sign, public_key, rotate, audit_read, unknown)")
	reason := fs.String("reason", "", "exact reason (granted, insufficient_relation, caveat_violation)")
	prefix := fs.String("object-prefix", "", "object prefix, e.g. signing-key:payments:")
	follow := fs.Bool("follow", false, "keep polling for new entries until interrupted")
	every := fs.Duration("every", 2*time.Second, "poll interval with --follow")
	includeOwn := fs.Bool("include-own", false, "with --follow, also print the entries of this command's own polls")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return usageError("audit tail takes only flags")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	a := signerv1.NewAuditServiceClient(cc)
	next := *after
	header := true
	// Every poll is itself audited (two entries sharing its request id,
	// which the answer names): left out of the next polls' output unless
	// --include-own. An id is forgotten once both its entries went by, or
	// (when a filter hides one of them) maxOwnAge polls later.
	type ownPoll struct{ seen, poll int }
	own := map[string]ownPoll{}
	const maxOwnAge = 1024
	for poll := 0; ; poll++ {
		cctx, cancel := c.call(ctx)
		var md metadata.MD
		resp, err := a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(*limit), Subject: *subject,
			Relation: *relation, Reason: *reason, ObjectPrefix: *prefix}, grpc.Header(&md))
		cancel()
		if err != nil {
			return err
		}
		entries := resp.Entries
		if n := len(entries); n > 0 {
			next = entries[n-1].Seq
		}
		if *follow && !*includeOwn {
			entries = entries[:0:0]
			for _, e := range resp.Entries {
				if o, mine := own[e.RequestId]; mine {
					if o.seen >= 1 {
						delete(own, e.RequestId)
					} else {
						own[e.RequestId] = ownPoll{o.seen + 1, o.poll}
					}
					continue
				}
				entries = append(entries, e)
			}
			for id, o := range own {
				if poll-o.poll > maxOwnAge {
					delete(own, id)
				}
			}
			for _, id := range md.Get(requestIDHeader) {
				own[id] = ownPoll{0, poll}
			}
		}
		c.printEntries(entries, header)
		header = false
		if !*follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}

func (c *cli) printEntries(es []*signerv1.AuditEntry, header bool) {
	if c.cfg.Output == "json" {
		for _, e := range es {
			c.json(toEntryJSON(e))
		}
		return
	}
	var rows [][]string
	for _, e := range es {
		rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), tableTime(e.Timestamp),
			e.Subject, e.Relation, e.Object, e.Reason, e.Code, e.Method})
	}
	if header || len(rows) > 0 {
		h := "SEQ\tTIME\tSUBJECT\tRELATION\tOBJECT\tREASON\tCODE\tMETHOD"
		if !header {
			h = strings.Repeat("\t", 7)
		}
		c.table(h, rows)
	}
}

// checkpointJSON is a verified checkpoint in every command's JSON output.
type checkpointJSON struct {
	Origin string `json:"origin"`
	Size   uint64 `json:"size"`
	Root   []byte `json:"root"`
	Note   string `json:"note"` // the signed note, as served: save it for audit verify --checkpoint
}

func toCheckpointJSON(cp auditlog.Checkpoint) checkpointJSON {
	return checkpointJSON{Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Note: string(cp.Note)}
}

// brokenError is a failed log verification.
type brokenError struct{ msg string }

func (e brokenError) Error() string { return e.msg }

// verifier returns the log's checkpoint verifier: the pinned key, or (with
// a warning) the one the signer reports.
func (c *cli) verifier(ctx context.Context, a signerv1.AuditServiceClient) (*auditlog.Verifier, error) {
	vkey := c.cfg.CheckpointKey
	if vkey == "" {
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := a.CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
		if err != nil {
			return nil, err
		}
		vkey = r.VerifierKey
		fmt.Fprintf(c.errw, "signerctl: warning: trusting the checkpoint key the signer reports (%s); pin it with %s\n",
			vkey, config.Name(&c.cfg, "CheckpointKey"))
	}
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return nil, usageError(fmt.Sprintf("%s: %v", config.Name(&c.cfg, "CheckpointKey"), err))
	}
	return v, nil
}

// latest fetches a fresh checkpoint and verifies it.
func (c *cli) latest(ctx context.Context, a signerv1.AuditServiceClient, v *auditlog.Verifier) (auditlog.Checkpoint, error) {
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := a.Checkpoint(cctx, &signerv1.CheckpointRequest{})
	if err != nil {
		if reasonOf(err) == signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_BROKEN {
			return auditlog.Checkpoint{}, brokenError{"the signer reports its audit log broken (its log names the entries): " + status.Convert(err).Message()}
		}
		return auditlog.Checkpoint{}, err
	}
	cp, err := v.Open(r.Checkpoint)
	if err != nil {
		return cp, brokenError{fmt.Sprintf("the signer's checkpoint does not verify: %v", err)}
	}
	return cp, nil
}

// auditCheckpoint prints a fresh signed checkpoint (save it to check
// consistency later: signerctl audit verify --checkpoint FILE).
func (c *cli) auditCheckpoint(ctx context.Context, args []string) error {
	if len(args) != 0 {
		return usageError("audit checkpoint takes no arguments")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	a := signerv1.NewAuditServiceClient(cc)
	v, err := c.verifier(ctx, a)
	if err != nil {
		return err
	}
	cp, err := c.latest(ctx, a, v)
	if err != nil {
		return err
	}
	if c.cfg.Output == "json" {
		return c.json(toCheckpointJSON(cp))
	}
	_, err = c.out.Write(cp.Note)
	return err
}

// auditCheckpointKey prints the log's verifier key as the signer reports it.
func (c *cli) auditCheckpointKey(ctx context.Context, args []string) error {
	if len(args) != 0 {
		return usageError("audit checkpoint-key takes no arguments")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := signerv1.NewAuditServiceClient(cc).CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
	if err != nil {
		return err
	}
	if c.cfg.Output == "json" {
		return c.json(map[string]string{"verifier_key": r.VerifierKey})
	}
	fmt.Fprintln(c.out, r.VerifierKey)
	return nil
}

// auditVerify checks the whole log from this side of the wire: every entry
// replayed into the tree, every stored checkpoint's signature and root, a
// fresh checkpoint, and consistency from a checkpoint saved earlier. It
// needs only the checkpoint verifier key.
func (c *cli) auditVerify(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	saved := fs.String("checkpoint", "", "a checkpoint saved earlier (signerctl audit checkpoint > FILE): prove the log only grew since")
	after := fs.String("after", "", "the export that ends where the store's entries start (after a prune)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return usageError("audit verify takes only --checkpoint FILE and --after EXPORT")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	a := signerv1.NewAuditServiceClient(cc)
	v, err := c.verifier(ctx, a)
	if err != nil {
		return err
	}
	latest, err := c.latest(ctx, a, v)
	if err != nil {
		return err
	}
	if *saved != "" {
		if err := c.consistency(ctx, a, v, *saved, latest); err != nil {
			return err
		}
	}
	var cps []auditlog.Checkpoint
	for afterSize := uint64(0); ; {
		cctx, cancel := c.call(ctx)
		r, err := a.ListCheckpoints(cctx, &signerv1.ListCheckpointsRequest{AfterSize: afterSize})
		cancel()
		if err != nil {
			return err
		}
		for _, n := range r.Checkpoints {
			cp, err := v.Open(n)
			if err != nil {
				return brokenError{fmt.Sprintf("a stored checkpoint does not verify: %v", err)}
			}
			// Checkpoints signed since latest (this command's own calls
			// make some) are beyond what is replayed.
			if cp.Size <= latest.Size {
				cps = append(cps, cp)
			}
			afterSize = cp.Size
		}
		if len(r.Checkpoints) == 0 {
			break
		}
	}
	start := audit.NewTree()
	if *after != "" {
		f, err := os.Open(*after)
		if err != nil {
			return usageError(err.Error())
		}
		info, err := audit.VerifyExport(f, v, nil)
		f.Close()
		if err != nil {
			return brokenError{fmt.Sprintf("--after %s: %v", *after, err)}
		}
		start = info.End
	}
	// Up to the checkpoint just taken: every call adds entries (this one's
	// own reads included), so "the end of the log" is that checkpoint.
	replay := audit.NewReplay(start, cps, nil)
	next := start.Size()
	for next < latest.Size {
		cctx, cancel := context.WithTimeout(ctx, 3*c.cfg.Timeout)
		r, err := a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(min(auditPage, latest.Size-next))})
		cancel()
		if err != nil {
			return err
		}
		if len(r.Entries) == 0 {
			return brokenError{fmt.Sprintf("entries %d..%d are missing: the signer's checkpoint has size %d", next+1, latest.Size, latest.Size)}
		}
		for _, e := range r.Entries {
			if err := replay.Add(ctx, e.Seq, e.Leaf); err != nil {
				if e.Seq > 1 && replay.Size() == 0 {
					return brokenError{fmt.Sprintf("%v (after a prune, pass the last export with --after)", err)}
				}
				return brokenError{err.Error()}
			}
			next = e.Seq
		}
	}
	if err := replay.Finish(ctx); err != nil {
		return brokenError{err.Error()}
	}
	if c.cfg.Output == "json" {
		var consistent *string
		if *saved != "" {
			consistent = saved
		}
		return c.json(struct {
			OK                 bool           `json:"ok"`
			EntriesChecked     uint64         `json:"entries_checked"`
			LogSize            uint64         `json:"log_size"`
			CheckpointsChecked int            `json:"checkpoints_checked"`
			Checkpoint         checkpointJSON `json:"checkpoint"`
			ConsistentWith     *string        `json:"consistent_with"`
		}{true, uint64(replay.Checked), replay.Size(), len(cps), toCheckpointJSON(latest), consistent})
	}
	fmt.Fprintf(c.out, "audit log verified: %d entries replayed, size %d, %d signed checkpoints matched, latest at size %d\n",
		replay.Checked, replay.Size(), len(cps), latest.Size)
	if *saved != "" {
		fmt.Fprintf(c.out, "consistent with the checkpoint in %s\n", *saved)
	}
	return nil
}

// consistency proves the checkpoint in file is a prefix of the log.
func (c *cli) consistency(ctx context.Context, a signerv1.AuditServiceClient, v *auditlog.Verifier, file string, latest auditlog.Checkpoint) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return usageError(err.Error())
	}
	old, err := v.Open(b)
	if err != nil {
		return brokenError{fmt.Sprintf("%s: %v", file, err)}
	}
	if old.Size > latest.Size {
		return brokenError{fmt.Sprintf("consistency fails at size %d: the log now has size %d (entries after seq %d were removed)", old.Size, latest.Size, latest.Size)}
	}
	if old.Size == 0 {
		return nil
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := a.ProveConsistency(cctx, &signerv1.ProveConsistencyRequest{OldSize: old.Size})
	if err != nil {
		return err
	}
	to, err := v.Open(r.Checkpoint)
	if err != nil {
		return brokenError{fmt.Sprintf("the proof's checkpoint does not verify: %v", err)}
	}
	if err := auditlog.VerifyConsistency(old, to, r.Hashes); err != nil {
		return brokenError{fmt.Sprintf("consistency fails at size %d: %v", old.Size, err)}
	}
	return nil
}

// auditProve proves a request's entries (or one seq) are in the log.
func (c *cli) auditProve(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageError("audit prove takes a request id (from SignResponse.request_id or a log line) or a seq")
	}
	req := &signerv1.ProveInclusionRequest{}
	if seq, err := strconv.ParseUint(args[0], 10, 64); err == nil {
		req.Entry = &signerv1.ProveInclusionRequest_Seq{Seq: seq}
	} else {
		req.Entry = &signerv1.ProveInclusionRequest_RequestId{RequestId: args[0]}
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	a := signerv1.NewAuditServiceClient(cc)
	v, err := c.verifier(ctx, a)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := a.ProveInclusion(cctx, req)
	if err != nil {
		return err
	}
	cp, err := v.Open(r.Checkpoint)
	if err != nil {
		return brokenError{fmt.Sprintf("the proof's checkpoint does not verify: %v", err)}
	}
	var out []entryJSON
	for _, p := range r.Proofs {
		if err := auditlog.VerifyInclusion(cp, p.Entry.Seq-1, p.Entry.Leaf, p.Hashes); err != nil {
			return brokenError{err.Error()}
		}
		e, err := auditlog.ParseLeaf(p.Entry.Leaf)
		if err != nil || e.RequestID.String() != p.Entry.RequestId || e.Object != p.Entry.Object || e.Reason != p.Entry.Reason {
			return brokenError{fmt.Sprintf("entry %d: the fields served do not match its leaf", p.Entry.Seq)}
		}
		out = append(out, toEntryJSON(p.Entry))
	}
	if c.cfg.Output == "json" {
		return c.json(struct {
			Entries    []entryJSON    `json:"entries"`
			Checkpoint checkpointJSON `json:"checkpoint"`
		}{out, toCheckpointJSON(cp)})
	}
	entries := make([]*signerv1.AuditEntry, 0, len(r.Proofs))
	for _, p := range r.Proofs {
		entries = append(entries, p.Entry)
	}
	c.printEntries(entries, true)
	fmt.Fprintf(c.out, "included in the log's checkpoint at size %d (verified with %s)\n", cp.Size, v.Origin())
	return nil
}

// auditExport writes the entries after the last prune (or after --after)
// up to --upto as a sealed export file.
func (c *cli) auditExport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit export", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	to := fs.String("to", "", "the export file to write (required)")
	after := fs.String("after", "", "the previous export: this one starts where it ended")
	upto := fs.Uint64("upto", 0, "the last seq to export (default: the latest checkpoint's size, rounded down to a whole tile)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || *to == "" {
		return usageError("audit export takes --to FILE [--after PREVIOUS] [--upto SEQ]")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	a := signerv1.NewAuditServiceClient(cc)
	v, err := c.verifier(ctx, a)
	if err != nil {
		return err
	}
	latest, err := c.latest(ctx, a, v)
	if err != nil {
		return err
	}
	start := audit.NewTree()
	if *after != "" {
		f, err := os.Open(*after)
		if err != nil {
			return usageError(err.Error())
		}
		info, err := audit.VerifyExport(f, v, nil)
		f.Close()
		if err != nil {
			return brokenError{fmt.Sprintf("--after %s: %v", *after, err)}
		}
		start = info.End
	}
	last := *upto
	if last == 0 {
		last = latest.Size - latest.Size%audit.TileSize
	}
	if last <= start.Size() || last > latest.Size {
		return usageError(fmt.Sprintf("nothing to export: entries %d..%d (the latest checkpoint has size %d)", start.Size()+1, last, latest.Size))
	}
	vkey := c.cfg.CheckpointKey
	if vkey == "" {
		cctx, cancel := c.call(ctx)
		r, err := a.CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
		cancel()
		if err != nil {
			return err
		}
		vkey = r.VerifierKey
	}
	f, err := os.OpenFile(*to, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return usageError(err.Error())
	}
	defer f.Close()
	w, err := audit.NewExportWriter(f, audit.ExportHeader{Origin: v.Origin(), VerifierKey: vkey, From: start.Size() + 1, To: last, Start: start.Edge()})
	if err != nil {
		return err
	}
	end := start.Clone()
	for next := start.Size(); next < last; {
		cctx, cancel := context.WithTimeout(ctx, 3*c.cfg.Timeout)
		r, err := a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(min(uint64(auditPage), last-next))})
		cancel()
		if err != nil {
			return err
		}
		if len(r.Entries) == 0 {
			return brokenError{fmt.Sprintf("entry %d is not in the store", next+1)}
		}
		for _, e := range r.Entries {
			if err := w.Add(e.Seq, e.Leaf); err != nil {
				return brokenError{err.Error()}
			}
			h := auditlog.LeafHash(e.Leaf)
			end.Append(h[:], nil)
			next = e.Seq
		}
	}
	var proof [][]byte
	if last < latest.Size {
		cctx, cancel := c.call(ctx)
		r, err := a.ProveConsistency(cctx, &signerv1.ProveConsistencyRequest{OldSize: last})
		cancel()
		if err != nil {
			return err
		}
		if latest, err = v.Open(r.Checkpoint); err != nil {
			return brokenError{err.Error()}
		}
		proof = r.Hashes
	}
	if err := w.Close(audit.ExportTrailer{Checkpoint: string(latest.Note), Consistency: proof}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// Check what was written, as the prune will.
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	if _, err := audit.VerifyExport(f, v, nil); err != nil {
		os.Remove(*to)
		return brokenError{fmt.Sprintf("the export does not verify: %v", err)}
	}
	if c.cfg.Output == "json" {
		return c.json(struct {
			File       string         `json:"file"`
			FromSeq    uint64         `json:"from_seq"`
			ToSeq      uint64         `json:"to_seq"`
			Checkpoint checkpointJSON `json:"checkpoint"`
		}{*to, start.Size() + 1, last, toCheckpointJSON(latest)})
	}
	fmt.Fprintf(c.out, "exported entries %d..%d to %s (checkpoint size %d); prune them with: plexsphere-signer --prune-audit-upto %d --prune-audit-export %s\n",
		start.Size()+1, last, *to, latest.Size, last, *to)
	return nil
}

// jwks prints the scope's published keys (PENDING, ACTIVE, PREVIOUS): what a
// verifier should trust. Always JSON.
func (c *cli) jwks(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageError("jwks takes one scope")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := signerv1.NewRotationServiceClient(cc).ListKeys(cctx, &signerv1.ListKeysRequest{Scope: args[0]})
	if err != nil {
		return err
	}
	if len(resp.Keys) == 0 {
		return unknownScope(args[0], "")
	}
	// The signer's JWKS endpoint builds its set with the same function.
	keys := make([]store.Key, 0, len(resp.Keys))
	for _, k := range resp.Keys {
		keys = append(keys, store.Key{ID: k.KeyId, State: store.State(k.State), Public: k.PublicKey})
	}
	set := jwks.FromKeys(keys)
	if len(set.Keys) == 0 {
		return status.Errorf(codes.NotFound, "scope %q has no published key (every key is RETIRED)", args[0])
	}
	return c.json(set)
}
