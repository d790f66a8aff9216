package ctl

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// proofFormat is the format of audit prove and audit consistency: --format,
// else what --output says (table is text), so that --output json means
// JSON here as in every other command.
func (c *cli) proofFormat(format string, allowed ...string) (string, error) {
	if format == "" {
		if c.cfg.Output == "json" {
			return "json", nil
		}
		return "text", nil
	}
	for _, a := range allowed {
		if format == a {
			return format, nil
		}
	}
	return "", usageError(fmt.Sprintf("--format %q: use %s", format, strings.Join(allowed, ", ")))
}

// entryProofJSON is a proved entry in audit prove's JSON: the entry as
// every command prints it, its leaf index and its inclusion proof.
type entryProofJSON struct {
	entryJSON
	LeafIndex      uint64   `json:"leaf_index"`
	InclusionProof [][]byte `json:"inclusion_proof"` // from the leaf's sibling up
}

// auditProve proves a request's entries (or one seq) are in the log, to a
// checkpoint it verifies (with the witness policy's quorum when given)
// before it prints anything.
func (c *cli) auditProve(ctx context.Context, args []string) error {
	fs := c.flagSet("audit prove", "[flags] <request-id> | --seq N",
		"Prove a request's entries (its admission and its outcome) or one entry are in the log, and print them\n"+
			"with their inclusion proofs and the checkpoint they lead to. The proof is verified here first (with\n"+
			"--witness-policy, the checkpoint's cosignatures too: exit 5 if it does not verify). A request id not in\n"+
			"the log is NotFound (exit 1).\n\n"+
			"--format tlog-proof prints a C2SP tlog-proof (c2sp.org/tlog-proof) of the request's outcome entry (its\n"+
			"last: the one with the reason and the payload and signature digests) or of --seq's, with the entry's\n"+
			"leaf as extra data: anyone with the log's verifier key (and the witness policy) checks it offline.")
	seq := fs.Uint64("seq", 0, "prove this entry (seq, from 1) instead of a request's")
	size := fs.Uint64("size", 0, "prove to the stored checkpoint of this size (default: the newest, cosigned when the log has witnesses)")
	format := fs.String("format", "", "text, json or tlog-proof (default: text, or json with --output json)")
	outFile := fs.String("out", "", "write the output to this file (replaced) instead of stdout")
	pos, err := c.parse(fs, args, -1)
	if err != nil {
		return err
	}
	f, err := c.proofFormat(*format, "text", "json", "tlog-proof")
	if err != nil {
		return err
	}
	req := &signerv1.ProveInclusionRequest{TreeSize: *size}
	var want string // what was asked for, in messages
	switch {
	case len(pos) == 1 && *seq == 0:
		// A number is a seq, as before --seq existed; a request id is 32
		// hex digits.
		if n, err := strconv.ParseUint(pos[0], 10, 64); err == nil {
			req.Entry, want = &signerv1.ProveInclusionRequest_Seq{Seq: n}, fmt.Sprintf("entry %d", n)
			break
		}
		if _, err := auditlog.ParseRequestID(pos[0]); err != nil {
			return usageError(fmt.Sprintf("audit prove: %q is not a request id (32 hex digits, from SignResponse.request_id or a log line)", pos[0]))
		}
		req.Entry, want = &signerv1.ProveInclusionRequest_RequestId{RequestId: pos[0]}, "request "+pos[0]
	case len(pos) == 0 && *seq > 0:
		req.Entry, want = &signerv1.ProveInclusionRequest_Seq{Seq: *seq}, fmt.Sprintf("entry %d", *seq)
	default:
		return usageError("audit prove takes a request id or --seq N (signerctl audit prove --help)")
	}
	s, err := c.auditor(ctx, auditVerifier)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := s.a.ProveInclusion(cctx, req)
	if err != nil {
		return notFound(err, want, req.GetSeq(), *size)
	}
	cp, err := s.open("the proof's checkpoint", r.Checkpoint)
	if err != nil {
		if _, verr := s.v.Open(r.Checkpoint); verr != nil {
			return s.notVerified(ctx, "the proof's checkpoint", verr)
		}
		return err
	}
	if *size != 0 && cp.Size != *size {
		return brokenError{fmt.Sprintf("asked for a proof to size %d, the signer answered one to size %d", *size, cp.Size)}
	}
	if len(r.Proofs) == 0 {
		return brokenError{fmt.Sprintf("the signer answered no proof for %s", want)}
	}
	for _, p := range r.Proofs {
		if err := auditlog.VerifyInclusion(cp, p.Entry.Seq-1, p.Entry.Leaf, p.Hashes); err != nil {
			return brokenError{err.Error()}
		}
		e, err := auditlog.ParseLeaf(p.Entry.Leaf)
		if err != nil {
			return brokenError{fmt.Sprintf("entry %d: its leaf: %v", p.Entry.Seq, err)}
		}
		if f := servedMismatch(e, p.Entry); f != "" {
			return brokenError{fmt.Sprintf("entry %d: the %s served does not match its leaf", p.Entry.Seq, f)}
		}
		if id := req.GetRequestId(); id != "" && e.RequestID.String() != id {
			return brokenError{fmt.Sprintf("entry %d belongs to request %s, not %s", p.Entry.Seq, e.RequestID, id)}
		}
		if n := req.GetSeq(); n != 0 && (p.Entry.Seq != n || len(r.Proofs) != 1) {
			return brokenError{fmt.Sprintf("asked for entry %d, the signer proved entry %d", n, p.Entry.Seq)}
		}
	}
	var out bytes.Buffer
	switch f {
	case "tlog-proof":
		// The request's outcome entry: its last (the admission entry comes
		// first and says only who called).
		last := r.Proofs[len(r.Proofs)-1]
		b, err := auditlog.Proof{Index: last.Entry.Seq - 1, Leaf: last.Entry.Leaf, Hashes: last.Hashes, Checkpoint: r.Checkpoint}.Marshal()
		if err != nil {
			return brokenError{err.Error()}
		}
		// Checked as whoever receives it will check it.
		if _, _, err := s.v.VerifyProof(b, s.policy); err != nil {
			return brokenError{fmt.Sprintf("the tlog-proof of entry %d does not verify: %v", last.Entry.Seq, err)}
		}
		out.Write(b)
	case "json":
		entries := make([]entryProofJSON, 0, len(r.Proofs))
		for _, p := range r.Proofs {
			entries = append(entries, entryProofJSON{toEntryJSON(p.Entry), p.Entry.Seq - 1, orNoHashes(p.Hashes)})
		}
		writeJSON(&out, struct {
			Entries    []entryProofJSON `json:"entries"`
			Checkpoint checkpointJSON   `json:"checkpoint"`
			Cosigners  []string         `json:"cosigners"` // checked with --witness-policy; null without
		}{entries, toCheckpointJSON(cp), s.cosigners(cp.Note)})
	default:
		for _, p := range r.Proofs {
			printEntryProof(&out, p)
		}
		fmt.Fprintf(&out, "checkpoint: %s, size %d, root %s, %s:\n%s", cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(cp.Root),
			s.describeCosigners(cp.Note), cp.Note)
		fmt.Fprintf(&out, "verified: %d entr%s in the checkpoint of size %d (key %s)\n", len(r.Proofs), plural(len(r.Proofs), "y", "ies"), cp.Size, s.v.Origin())
	}
	return c.emit(*outFile, out.Bytes())
}

// notFound says what was not found when the signer answers NotFound: its
// message is the sentinel's ("audit entry not found"); its ErrorInfo says
// the log's size (for an entry beyond it) and how far it was pruned.
func notFound(err error, want string, seq, size uint64) error {
	if status.Code(err) != codes.NotFound {
		return err
	}
	var md map[string]string
	if info := errorInfo(err); info != nil {
		md = info.Metadata
	}
	where := "the audit log"
	if size != 0 {
		where = fmt.Sprintf("the audit log's checkpoint of size %d (or no such checkpoint)", size)
	}
	msg := fmt.Sprintf("%s: not found in %s (the signer: %s)", want, where, status.Convert(err).Message())
	if n := md["log_size"]; n != "" && md["pruned_up_to"] == "" {
		msg = fmt.Sprintf("%s does not exist: the log has %s entries (the signer: %s)", want, n, status.Convert(err).Message())
	}
	if p, perr := strconv.ParseUint(md["pruned_up_to"], 10, 64); perr == nil && p > 0 {
		if seq > 0 && seq <= p {
			msg = fmt.Sprintf("%s was pruned: the store holds entries from seq %d on (pruned up to %d); use the export that covers it, which holds the entry and the proof of its range (signerctl audit verify --after EXPORT, docs/audit.md)", want, p+1, p)
		} else {
			msg += fmt.Sprintf("; entries up to seq %d were pruned: an older request's entries are in the export that covers them (docs/audit.md)", p)
		}
	}
	return status.Error(codes.NotFound, msg)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func orNoHashes(h [][]byte) [][]byte {
	if h == nil {
		return [][]byte{}
	}
	return h
}

// printEntryProof prints a proved entry's fields, leaf index and inclusion
// proof for people.
func printEntryProof(w io.Writer, p *signerv1.InclusionProof) {
	e := p.Entry
	field := func(name, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "  %-17s %s\n", name, v)
	}
	fmt.Fprintf(w, "entry %d (leaf index %d)\n", e.Seq, e.Seq-1)
	field("request_id", e.RequestId)
	field("timestamp", tableTime(e.Timestamp))
	field("subject", e.Subject)
	field("relation", e.Relation)
	field("object", e.Object)
	field("reason", e.Reason)
	field("caveat_context", "["+strings.Join(e.CaveatContext, ", ")+"]")
	field("method", e.Method)
	field("code", e.Code)
	field("payload_sha256", e.PayloadSha256)
	field("signature_sha256", e.SignatureSha256)
	if len(e.Detail) > 0 {
		field("detail", string(e.Detail))
	}
	if e.SignVariant != "" || e.ContextSha256 != "" {
		field("sign_variant", e.SignVariant)
		field("context_sha256", e.ContextSha256)
	}
	field("leaf", base64.StdEncoding.EncodeToString(e.Leaf))
	fmt.Fprintf(w, "  inclusion proof (%d hash%s, from the leaf's sibling up):\n", len(p.Hashes), plural(len(p.Hashes), "", "es"))
	for _, h := range p.Hashes {
		fmt.Fprintf(w, "    %s\n", base64.StdEncoding.EncodeToString(h))
	}
}

// servedMismatch names the first field of an entry as served that is not
// what its leaf says, "" when all agree. The proof covers the leaf only,
// while text and JSON print the served fields: each must be checked, or a
// signer could show a proved entry with another payload digest, sign
// variant or outcome than the one its log commits to.
func servedMismatch(e auditlog.Entry, s *signerv1.AuditEntry) string {
	ts := s.GetTimestamp()
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"request_id", e.RequestID.String() == s.GetRequestId()},
		{"timestamp", ts != nil && ts.IsValid() && ts.AsTime().Equal(e.Timestamp)},
		{"subject", e.Subject == s.GetSubject()},
		{"relation", e.Relation == s.GetRelation()},
		{"object", e.Object == s.GetObject()},
		{"reason", e.Reason == s.GetReason()},
		{"caveat_context", slices.Equal(e.CaveatContext, s.GetCaveatContext())},
		{"method", e.Method == s.GetMethod()},
		{"code", e.Code == s.GetCode()},
		{"payload_sha256", hex.EncodeToString(e.PayloadSHA256) == s.GetPayloadSha256()},
		{"signature_sha256", hex.EncodeToString(e.SignatureSHA256) == s.GetSignatureSha256()},
		{"detail", bytes.Equal(e.Detail, s.GetDetail())},
		{"sign_variant", e.SignVariant == s.GetSignVariant()},
		{"context_sha256", hex.EncodeToString(e.ContextSHA256) == s.GetContextSha256()},
	} {
		if !f.ok {
			return f.name
		}
	}
	return ""
}

// writeJSON is c.json's encoding into w.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // only the types above: they encode
}

// emit writes a command's output to file (replaced), or to stdout without
// one. The output is whole before it is written: nothing is printed for a
// proof that does not verify.
func (c *cli) emit(file string, b []byte) error {
	if file == "" {
		_, err := c.out.Write(b)
		return err
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return usageError(fmt.Sprintf("--out: %v", err))
	}
	return nil
}

// auditConsistency proves the stored checkpoint of size OLD (or a saved
// one) is a prefix of the stored checkpoint of size NEW (the newest by
// default).
func (c *cli) auditConsistency(ctx context.Context, args []string) error {
	fs := c.flagSet("audit consistency", "[--format text|json] OLD [NEW] | --from FILE [NEW]",
		"Prove the log only grew from the stored checkpoint of size OLD (or the checkpoint saved in --from FILE)\n"+
			"to the stored checkpoint of size NEW (default: the newest, the newest witnessed one when it covers OLD),\n"+
			"and print the proof. Exit 5 if it does not verify; with --witness-policy, the NEW checkpoint must be\n"+
			"cosigned by the policy's quorum.")
	from := fs.String("from", "", "a checkpoint saved earlier (signerctl audit checkpoint > FILE) instead of OLD")
	format := fs.String("format", "", "text or json (default: text, or json with --output json)")
	pos, err := c.parse(fs, args, -1)
	if err != nil {
		return err
	}
	f, err := c.proofFormat(*format, "text", "json")
	if err != nil {
		return err
	}
	var oldSize, newSize uint64
	sizes := make([]uint64, len(pos))
	for i, p := range pos {
		if sizes[i], err = strconv.ParseUint(p, 10, 64); err != nil || sizes[i] == 0 {
			return usageError(fmt.Sprintf("audit consistency: %q is not a checkpoint size (a number from 1)", p))
		}
	}
	switch {
	case *from == "" && len(sizes) == 1:
		oldSize = sizes[0]
	case *from == "" && len(sizes) == 2:
		oldSize, newSize = sizes[0], sizes[1]
	case *from != "" && len(sizes) <= 1:
		if len(sizes) == 1 {
			newSize = sizes[0]
		}
	default:
		return usageError("audit consistency takes OLD [NEW], or --from FILE [NEW] (signerctl audit consistency --help)")
	}
	var saved []byte
	if *from != "" {
		if saved, err = os.ReadFile(*from); err != nil {
			return usageError(err.Error())
		}
	}
	need := auditVerifier
	if newSize == 0 {
		need = auditLatest // the newest: a fresh checkpoint
	}
	s, err := c.auditor(ctx, need)
	if err != nil {
		return err
	}
	var old auditlog.Checkpoint
	if saved != nil {
		if old, err = s.v.Open(saved); err != nil {
			return brokenError{fmt.Sprintf("%s: %v", *from, err)}
		}
		if old.Size == 0 {
			return usageError(fmt.Sprintf("%s: the checkpoint of the empty log is a prefix of every log", *from))
		}
	} else {
		cctx, cancel := c.call(ctx)
		r, err := s.a.ListCheckpoints(cctx, &signerv1.ListCheckpointsRequest{AfterSize: oldSize - 1, Limit: 1})
		cancel()
		if err != nil {
			return err
		}
		if len(r.Checkpoints) == 0 {
			return status.Errorf(codes.NotFound, "no stored checkpoint of size %d (the log's checkpoints: AuditService.ListCheckpoints)", oldSize)
		}
		if old, err = s.v.Open(r.Checkpoints[0]); err != nil {
			return brokenError{fmt.Sprintf("the stored checkpoint of size %d does not verify: %v", oldSize, err)}
		}
		if old.Size != oldSize {
			return status.Errorf(codes.NotFound, "no stored checkpoint of size %d (the next is of size %d)", oldSize, old.Size)
		}
	}
	if newSize == 0 {
		// The newest: the witnessed one when it covers OLD (the one the
		// witnesses vouch for), else the fresh one.
		newSize = s.latest.Size
		if w, err := s.witnessedCheckpoint(); err == nil && w.Size >= old.Size {
			newSize = w.Size
		}
	}
	if old.Size > newSize {
		return usageError(fmt.Sprintf("audit consistency: OLD (size %d) is larger than NEW (size %d)", old.Size, newSize))
	}
	cctx, cancel := c.call(ctx)
	r, err := s.a.ProveConsistency(cctx, &signerv1.ProveConsistencyRequest{OldSize: old.Size, NewSize: newSize})
	cancel()
	if err != nil {
		return notFound(err, fmt.Sprintf("the checkpoint of size %d", newSize), 0, 0)
	}
	to, err := s.open("the checkpoint of size "+strconv.FormatUint(newSize, 10), r.Checkpoint)
	if err != nil {
		return err
	}
	if to.Size != newSize {
		return brokenError{fmt.Sprintf("asked for a proof to size %d, the signer answered one to size %d", newSize, to.Size)}
	}
	if err := auditlog.VerifyConsistency(old, to, r.Hashes); err != nil {
		return brokenError{fmt.Sprintf("consistency fails from size %d to %d: %v", old.Size, to.Size, err)}
	}
	if f == "json" {
		return c.json(struct {
			OK        bool           `json:"ok"`
			Old       checkpointJSON `json:"old"`
			New       checkpointJSON `json:"new"`
			Hashes    [][]byte       `json:"hashes"`
			Cosigners []string       `json:"cosigners"` // the new checkpoint's, checked with --witness-policy; null without
		}{true, toCheckpointJSON(old), toCheckpointJSON(to), orNoHashes(r.Hashes), s.cosigners(to.Note)})
	}
	fmt.Fprintf(c.out, "old checkpoint: %s, size %d, root %s\n", old.Origin, old.Size, base64.StdEncoding.EncodeToString(old.Root))
	fmt.Fprintf(c.out, "new checkpoint: %s, size %d, root %s, %s\n", to.Origin, to.Size, base64.StdEncoding.EncodeToString(to.Root), s.describeCosigners(to.Note))
	fmt.Fprintf(c.out, "consistency proof (%d hash%s):\n", len(r.Hashes), plural(len(r.Hashes), "", "es"))
	for _, h := range r.Hashes {
		fmt.Fprintln(c.out, base64.StdEncoding.EncodeToString(h))
	}
	fmt.Fprintf(c.out, "verified: the log at size %d is a prefix of the log at size %d\n", old.Size, to.Size)
	return nil
}
