package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
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
	SignVariant     string   `json:"sign_variant,omitempty"`
	ContextSHA256   string   `json:"context_sha256,omitempty"`
	Leaf            []byte   `json:"leaf"`
}

func toEntryJSON(e *signerv1.AuditEntry) entryJSON {
	cav := e.CaveatContext
	if cav == nil {
		cav = []string{} // the contract: always an empty list, never null
	}
	return entryJSON{Seq: e.Seq, Timestamp: jsonTime(e.Timestamp), Subject: e.Subject, Relation: e.Relation,
		Object: e.Object, Reason: e.Reason, CaveatContext: cav, Method: e.Method, Code: e.Code, RequestID: e.RequestId,
		PayloadSHA256: e.PayloadSha256, SignatureSHA256: e.SignatureSha256, SignVariant: e.SignVariant,
		ContextSHA256: e.ContextSha256, Leaf: e.Leaf}
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

// restoredError is a log restored behind a checkpoint the operator saved:
// the log itself may be whole, but it no longer holds entries that
// checkpoint covers (ExitRestored).
type restoredError struct{ msg string }

func (e restoredError) Error() string { return e.msg }

// auditSession is what every audit command starts from: the AuditService
// client, the log's verifier, the witness policy when one is given and, for
// the commands that check the log as it is now, a fresh checkpoint.
type auditSession struct {
	c    *cli
	a    signerv1.AuditServiceClient
	v    *auditlog.Verifier
	vkey string
	// policy is --witness-policy's, nil without it: then cosignatures are
	// carried along but never counted.
	policy *auditlog.WitnessPolicy
	// latest is the fresh checkpoint (auditLatest), verified.
	latest auditlog.Checkpoint
	// witnessed is CheckpointResponse.witnessed as served, unchecked until
	// a command relies on it (witnessedCheckpoint).
	witnessed []byte
}

// auditNeed is how much of a session a command needs: a verifier costs a
// call when the key is not pinned (and a warning), a fresh checkpoint costs
// the signer a check and a push to its witnesses.
type auditNeed int

const (
	auditClient   auditNeed = iota // the client alone (tail, checkpoint-key)
	auditVerifier                  // and the verifier and the witness policy
	auditLatest                    // and a fresh checkpoint, verified
)

// auditor opens an audit session. Flags are parsed before it: a usage
// mistake or --help never dials the signer.
func (c *cli) auditor(ctx context.Context, need auditNeed) (*auditSession, error) {
	s := &auditSession{c: c}
	if need >= auditVerifier {
		p, err := c.witnessPolicy()
		if err != nil {
			return nil, err
		}
		s.policy = p
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	s.a = signerv1.NewAuditServiceClient(cc)
	if need >= auditVerifier {
		if err := s.verifier(ctx); err != nil {
			return nil, err
		}
	}
	if need >= auditLatest {
		if err := s.refresh(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// witnessPolicy reads --witness-policy, or returns nil without it.
func (c *cli) witnessPolicy() (*auditlog.WitnessPolicy, error) {
	if c.cfg.WitnessPolicyFile == "" {
		return nil, nil
	}
	text, err := os.ReadFile(c.cfg.WitnessPolicyFile)
	if err != nil {
		return nil, c.configErrorf("WitnessPolicyFile", "%v", err)
	}
	p, err := auditlog.ParseWitnessPolicy(text)
	if err != nil {
		return nil, c.configErrorf("WitnessPolicyFile", "%v", err)
	}
	return p, nil
}

// verifier sets the log's checkpoint verifier: the pinned key, or (with a
// warning) the one the signer reports.
func (s *auditSession) verifier(ctx context.Context) error {
	c := s.c
	vkey := c.cfg.CheckpointKey
	if vkey == "" {
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := s.a.CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
		if err != nil {
			return err
		}
		vkey = r.VerifierKey
		fmt.Fprintf(c.errw, "signerctl: warning: trusting the checkpoint key the signer reports (%s); pin it with %s\n",
			vkey, config.Name(&c.cfg, "CheckpointKey"))
	}
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return c.configErrorf("CheckpointKey", "%v", err)
	}
	s.v, s.vkey = v, vkey
	return nil
}

// refresh fetches a fresh checkpoint and verifies it, and keeps the newest
// witnessed one as served.
func (s *auditSession) refresh(ctx context.Context) error {
	cctx, cancel := s.c.call(ctx)
	defer cancel()
	r, err := s.a.Checkpoint(cctx, &signerv1.CheckpointRequest{})
	if err != nil {
		if reasonOf(err) == signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_BROKEN {
			return brokenError{"the signer reports its audit log broken (its log names the entries): " + status.Convert(err).Message()}
		}
		return err
	}
	cp, err := s.v.Open(r.Checkpoint)
	if err != nil {
		return s.notVerified(ctx, "the signer's checkpoint", err)
	}
	s.latest, s.witnessed = cp, r.Witnessed
	return nil
}

// notVerified is the broken-log error for a checkpoint the verifier
// refused. With a pinned key the signer does not report, it shows both:
// a pin left over from another signer (a new make run store) and a signer
// that is not the one pinned look the same from here, and only the
// operator can tell which.
func (s *auditSession) notVerified(ctx context.Context, what string, err error) error {
	c := s.c
	if c.cfg.CheckpointKey != "" {
		cctx, cancel := c.call(ctx)
		r, kerr := s.a.CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
		cancel()
		if kerr == nil && r.VerifierKey != c.cfg.CheckpointKey {
			return brokenError{fmt.Sprintf("%s is not signed by the pinned checkpoint key:\n  expected (%s): %s\n  found (the signer reports): %s\n"+
				"if this signer's log was started anew on purpose (a new store, e.g. make run without KEEP=1), pin its key: %s=%s (make run: . bin/run/signerctl.env);"+
				" if not, this is not the log you pinned: do not trust it",
				what, config.Name(&c.cfg, "CheckpointKey"), c.cfg.CheckpointKey, r.VerifierKey, "SIGNERCTL_CHECKPOINT_KEY", r.VerifierKey)}
		}
	}
	return brokenError{fmt.Sprintf("%s does not verify: %v", what, err)}
}

// open verifies a checkpoint the signer served: with the witness policy,
// its quorum's cosignatures too (what names the missing witnesses).
func (s *auditSession) open(what string, note []byte) (auditlog.Checkpoint, error) {
	if s.policy == nil {
		cp, err := s.v.Open(note)
		if err != nil {
			return cp, brokenError{fmt.Sprintf("%s does not verify: %v", what, err)}
		}
		return cp, nil
	}
	cp, err := s.v.OpenWitnessed(note, s.policy)
	if errors.Is(err, auditlog.ErrNotWitnessed) {
		plain, _ := s.v.Open(note)
		return cp, brokenError{fmt.Sprintf("%s (size %d) is not cosigned by the witness policy's quorum (%s): cosigned by %s; missing %s",
			what, plain.Size, config.Name(&s.c.cfg, "WitnessPolicyFile"), listOrNone(s.policy.Cosigners(note)), listOrNone(s.missing(note)))}
	}
	if err != nil {
		return cp, brokenError{fmt.Sprintf("%s does not verify: %v", what, err)}
	}
	return cp, nil
}

// missing names the policy's witnesses whose cosignature note lacks.
func (s *auditSession) missing(note []byte) []string {
	have := map[string]bool{}
	for _, n := range s.policy.Cosigners(note) {
		have[n] = true
	}
	var out []string
	for _, w := range s.policy.Witnesses() {
		if !have[w.Name] {
			out = append(out, w.Name)
		}
	}
	return out
}

// witnessedCheckpoint is the newest witnessed checkpoint the signer served
// with the fresh one, verified (with the policy's quorum when one is given).
func (s *auditSession) witnessedCheckpoint() (auditlog.Checkpoint, error) {
	if len(s.witnessed) == 0 {
		want := "its witnesses"
		if s.policy != nil {
			want = "the witness policy's (" + strings.Join(orNone(policyNames(s.policy)), ", ") + ")"
		}
		return auditlog.Checkpoint{}, brokenError{fmt.Sprintf("the signer has no witnessed checkpoint: no checkpoint of its log (newest: size %d) carries the cosignatures of %s; "+
			"is it configured with witnesses (SIGNER_WITNESS_POLICY_FILE), and do they answer? (the signer's log names the witness)", s.latest.Size, want)}
	}
	return s.open("the newest witnessed checkpoint", s.witnessed)
}

// witnessedCovering is the witnessed checkpoint that covers the fresh one:
// what audit verify --witness-policy requires, so that every entry it
// replays is under the witnesses' cosignatures. A witnessed checkpoint
// behind the fresh one gets one more try (a replica's push may have raced
// this one's); then the entries beyond it are named.
func (s *auditSession) witnessedCovering(ctx context.Context) (auditlog.Checkpoint, error) {
	for attempt := 0; ; attempt++ {
		w, err := s.witnessedCheckpoint()
		if err != nil {
			return w, err
		}
		switch {
		case w.Size == s.latest.Size && !bytes.Equal(w.Root, s.latest.Root):
			return w, brokenError{fmt.Sprintf("the witnessed checkpoint of size %d has another root than the signer's newest of that size: the witnesses saw another log", w.Size)}
		case w.Size > s.latest.Size:
			// A check ran between the two reads: the witnessed one is the
			// newest, and the log is checked up to it.
			s.latest = w
			return w, nil
		case w.Size == s.latest.Size:
			return w, nil
		}
		if attempt > 0 {
			// Which witness is behind is not known here: the signer keeps
			// a checkpoint's cosignatures only once the quorum's are in.
			return w, brokenError{fmt.Sprintf("entries %d..%d are not witnessed: the signer's newest checkpoint has size %d, the newest the witness quorum cosigned has size %d: a witness of the policy (%s) has not cosigned since; the signer's log names it",
				w.Size+1, s.latest.Size, s.latest.Size, w.Size, strings.Join(policyNames(s.policy), ", "))}
		}
		if err := s.refresh(ctx); err != nil {
			return w, err
		}
	}
}

func policyNames(p *auditlog.WitnessPolicy) []string {
	var out []string
	for _, w := range p.Witnesses() {
		out = append(out, w.Name)
	}
	return out
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

func listOrNone(s []string) string { return strings.Join(orNone(s), ", ") }

// cosigners names who cosigned note: the policy's witnesses whose
// cosignatures verify, or nil without a policy (nothing is checked then).
func (s *auditSession) cosigners(note []byte) []string {
	if s.policy == nil {
		return nil
	}
	return orEmpty(s.policy.Cosigners(note))
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// describeCosigners says who cosigned note, for the text outputs.
func (s *auditSession) describeCosigners(note []byte) string {
	if s.policy != nil {
		return "cosigned by " + listOrNone(s.policy.Cosigners(note)) + " (checked with the witness policy)"
	}
	var others []string
	for _, n := range noteSigners(note) {
		if auditlog.EpochOf(s.v.Origin(), n) == 0 {
			others = append(others, n)
		}
	}
	if len(others) == 0 {
		return "no cosignatures"
	}
	return "cosignature lines by " + strings.Join(others, ", ") + " (not checked: pass " + config.Name(&s.c.cfg, "WitnessPolicyFile") + ")"
}

// noteSigners is the key names on a signed note's signature lines.
func noteSigners(note []byte) []string {
	i := bytes.LastIndex(note, []byte("\n\n"))
	if i < 0 {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(note[i+2:]), "\n") {
		if rest, ok := strings.CutPrefix(line, "— "); ok {
			name, _, _ := strings.Cut(rest, " ")
			out = append(out, name)
		}
	}
	return out
}

// auditCheckpoint prints a fresh signed checkpoint (save it to check
// consistency later: signerctl audit verify --checkpoint FILE), or the
// newest witnessed one.
func (c *cli) auditCheckpoint(ctx context.Context, args []string) error {
	fs := c.flagSet("audit checkpoint", "[--witnessed]",
		"Print a fresh signed checkpoint of the audit log (save it: audit verify --checkpoint FILE).\n"+
			"With --witness-policy, the newest witnessed checkpoint must carry the policy's quorum (exit 5 if not).")
	witnessed := fs.Bool("witnessed", false, "print the newest checkpoint the witnesses cosigned, with their cosignature lines (it may be older than the newest signed)")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	s, err := c.auditor(ctx, auditLatest)
	if err != nil {
		return err
	}
	cp := s.latest
	if *witnessed || s.policy != nil {
		w, err := s.witnessedCheckpoint()
		if err != nil {
			return err
		}
		if *witnessed {
			cp = w
			if s.policy == nil {
				fmt.Fprintf(c.errw, "signerctl: warning: the cosignatures are not checked; pass %s\n", config.Name(&c.cfg, "WitnessPolicyFile"))
			}
		}
	}
	if c.cfg.Output == "json" {
		return c.json(toCheckpointJSON(cp))
	}
	_, err = c.out.Write(cp.Note)
	return err
}

// auditCheckpointKey prints the log's verifier key as the signer reports it.
func (c *cli) auditCheckpointKey(ctx context.Context, args []string) error {
	fs := c.flagSet("audit checkpoint-key", "", "Print the log's checkpoint verifier key as the signer reports it: pin it (SIGNERCTL_CHECKPOINT_KEY).")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	s, err := c.auditor(ctx, auditClient)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	r, err := s.a.CheckpointVerifierKey(cctx, &signerv1.CheckpointVerifierKeyRequest{})
	if err != nil {
		return err
	}
	if c.cfg.Output == "json" {
		return c.json(map[string]string{"verifier_key": r.VerifierKey})
	}
	fmt.Fprintln(c.out, r.VerifierKey)
	return nil
}

// verifyJSON is audit verify's JSON output.
type verifyJSON struct {
	OK                 bool           `json:"ok"`
	EntriesChecked     uint64         `json:"entries_checked"`
	LogSize            uint64         `json:"log_size"`
	CheckpointsChecked int            `json:"checkpoints_checked"`
	Checkpoint         checkpointJSON `json:"checkpoint"`
	// Witnessed is the newest witnessed checkpoint, with --witness-policy.
	Witnessed      *checkpointJSON `json:"witnessed"`
	Cosigners      []string        `json:"cosigners"`
	ConsistentWith *string         `json:"consistent_with"`
	// RestoredBehind names the saved checkpoint a restore went behind.
	RestoredBehind *string     `json:"restored_behind"`
	Epochs         []epochJSON `json:"epochs"`
}

// auditVerify checks the whole log from this side of the wire: every entry
// replayed into the tree, every stored checkpoint's signature and root, a
// fresh checkpoint, consistency from a checkpoint saved earlier (across the
// epochs of a restore) and, with a witness policy, the witnesses'
// cosignatures over all of it. It needs only the checkpoint verifier key.
func (c *cli) auditVerify(ctx context.Context, args []string) error {
	fs := c.flagSet("audit verify", "[--checkpoint FILE] [--after EXPORT]",
		"Replay every entry against the signed checkpoints and a fresh one (exit 5 if the log is broken).\n"+
			"With --checkpoint, prove the log only grew since a saved checkpoint; one of an earlier epoch\n"+
			"(a restore) is checked against the epoch records: exit 6 if the restore lost entries it covers.\n"+
			"With --witness-policy, the newest checkpoint must be cosigned by the policy's quorum (exit 5 if not).")
	saved := fs.String("checkpoint", "", "a checkpoint saved earlier (signerctl audit checkpoint > FILE): prove the log only grew since")
	after := fs.String("after", "", "the export that ends where the store's entries start (after a prune)")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	s, err := c.auditor(ctx, auditLatest)
	if err != nil {
		return err
	}
	out := verifyJSON{OK: true, Epochs: []epochJSON{}}
	if s.policy != nil {
		w, err := s.witnessedCovering(ctx)
		if err != nil {
			return err
		}
		wj := toCheckpointJSON(w)
		out.Witnessed, out.Cosigners = &wj, s.cosigners(w.Note)
	}
	latest := s.latest
	var restored error
	var savedText string
	if *saved != "" {
		sv, err := s.savedConsistency(ctx, *saved)
		if err != nil {
			return err
		}
		out.Epochs, restored = sv.epochs, sv.restored
		if restored == nil {
			out.ConsistentWith = saved
		} else {
			out.RestoredBehind = saved
		}
		savedText = sv.text
	}
	var cps []auditlog.Checkpoint
	for afterSize := uint64(0); ; {
		cctx, cancel := c.call(ctx)
		r, err := s.a.ListCheckpoints(cctx, &signerv1.ListCheckpointsRequest{AfterSize: afterSize})
		cancel()
		if err != nil {
			return err
		}
		for _, n := range r.Checkpoints {
			cp, err := s.v.Open(n)
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
		info, err := audit.VerifyExport(f, s.v, nil)
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
		r, err := s.a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(min(auditPage, latest.Size-next))})
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
		out.EntriesChecked, out.LogSize, out.CheckpointsChecked, out.Checkpoint = uint64(replay.Checked), replay.Size(), len(cps), toCheckpointJSON(latest)
		if err := c.json(out); err != nil {
			return err
		}
		return restored
	}
	fmt.Fprintf(c.out, "audit log verified: %d entries replayed, size %d, %d signed checkpoints matched, latest at size %d\n",
		replay.Checked, replay.Size(), len(cps), latest.Size)
	if out.Witnessed != nil {
		fmt.Fprintf(c.out, "witnessed: the newest witnessed checkpoint has size %d, %s\n", out.Witnessed.Size, s.describeCosigners([]byte(out.Witnessed.Note)))
	}
	fmt.Fprint(c.out, savedText)
	return restored
}

// sameEpochConsistency proves the saved checkpoint old (of the fresh one's
// epoch) is a prefix of the log.
func (s *auditSession) sameEpochConsistency(ctx context.Context, file string, old auditlog.Checkpoint) error {
	latest := s.latest
	if old.Size > latest.Size {
		return brokenError{fmt.Sprintf("consistency fails at size %d: the log now has size %d (entries after seq %d were removed)", old.Size, latest.Size, latest.Size)}
	}
	if old.Size == 0 {
		return nil
	}
	// To the fresh checkpoint's size, not "the newest": the newest the
	// signer proves to is its newest witnessed one, which may be older
	// than the saved checkpoint.
	to, hashes, err := s.proveConsistency(ctx, old.Size, latest.Size)
	if err != nil {
		return err
	}
	if err := auditlog.VerifyConsistency(old, to, hashes); err != nil {
		return brokenError{fmt.Sprintf("consistency fails at size %d (%s): %v", old.Size, file, err)}
	}
	return nil
}

// proveConsistency asks for the proof from size old to the stored
// checkpoint of size newSize and verifies the checkpoint it leads to (with
// the witness policy's quorum when one is given: witnessed). It does not
// check the proof.
func (s *auditSession) proveConsistency(ctx context.Context, old, newSize uint64) (auditlog.Checkpoint, [][]byte, error) {
	cctx, cancel := s.c.call(ctx)
	defer cancel()
	r, err := s.a.ProveConsistency(cctx, &signerv1.ProveConsistencyRequest{OldSize: old, NewSize: newSize})
	if err != nil {
		return auditlog.Checkpoint{}, nil, err
	}
	to, err := s.v.Open(r.Checkpoint)
	if err != nil {
		return to, nil, brokenError{fmt.Sprintf("the proof's checkpoint does not verify: %v", err)}
	}
	if newSize != 0 && to.Size != newSize {
		return to, nil, brokenError{fmt.Sprintf("asked for a proof to size %d, the signer answered one to size %d", newSize, to.Size)}
	}
	return to, r.Hashes, nil
}

// auditExport writes the entries after the last prune (or after --after)
// up to --upto as a sealed export file.
func (c *cli) auditExport(ctx context.Context, args []string) error {
	fs := c.flagSet("audit export", "--to FILE [--after PREVIOUS] [--upto SEQ]",
		"Write entries with their proof to a checkpoint, ready to prune (docs/audit.md). The checkpoint\n"+
			"is the newest witnessed one when it covers the export (checked with --witness-policy if given).")
	to := fs.String("to", "", "the export file to write (required)")
	after := fs.String("after", "", "the previous export: this one starts where it ended")
	upto := fs.Uint64("upto", 0, "the last seq to export (default: the latest checkpoint's size, rounded down to a whole tile)")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	if *to == "" {
		return usageError("audit export takes --to FILE [--after PREVIOUS] [--upto SEQ]")
	}
	s, err := c.auditor(ctx, auditLatest)
	if err != nil {
		return err
	}
	latest := s.latest
	start := audit.NewTree()
	if *after != "" {
		f, err := os.Open(*after)
		if err != nil {
			return usageError(err.Error())
		}
		info, err := audit.VerifyExport(f, s.v, nil)
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
	// The trailer's checkpoint: the newest witnessed one when it covers the
	// export, so that the export carries the witnesses' word for its
	// entries; else the fresh one.
	trailer := latest
	if len(s.witnessed) > 0 || s.policy != nil {
		w, err := s.witnessedCheckpoint()
		switch {
		case err != nil:
			return err
		case w.Size >= last:
			trailer = w
		case s.policy != nil:
			fmt.Fprintf(c.errw, "signerctl: warning: the newest witnessed checkpoint (size %d) does not cover the export (to seq %d): it is sealed with the signer's newest, not witnessed\n", w.Size, last)
		}
	}
	f, err := os.OpenFile(*to, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return usageError(err.Error())
	}
	defer f.Close()
	w, err := audit.NewExportWriter(f, audit.ExportHeader{Origin: s.v.Origin(), VerifierKey: s.vkey, From: start.Size() + 1, To: last, Start: start.Edge()})
	if err != nil {
		return err
	}
	end := start.Clone()
	for next := start.Size(); next < last; {
		cctx, cancel := context.WithTimeout(ctx, 3*c.cfg.Timeout)
		r, err := s.a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(min(uint64(auditPage), last-next))})
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
	if last < trailer.Size {
		to, hashes, err := s.proveConsistency(ctx, last, trailer.Size)
		if err != nil {
			return err
		}
		if !bytes.Equal(to.Root, trailer.Root) {
			return brokenError{fmt.Sprintf("the signer's checkpoint of size %d has another root than the one it served before", to.Size)}
		}
		proof = hashes
	}
	if err := w.Close(audit.ExportTrailer{Checkpoint: string(trailer.Note), Consistency: proof}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// Check what was written, as the prune will.
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	if _, err := audit.VerifyExport(f, s.v, nil); err != nil {
		os.Remove(*to)
		return brokenError{fmt.Sprintf("the export does not verify: %v", err)}
	}
	if c.cfg.Output == "json" {
		return c.json(struct {
			File       string         `json:"file"`
			FromSeq    uint64         `json:"from_seq"`
			ToSeq      uint64         `json:"to_seq"`
			Checkpoint checkpointJSON `json:"checkpoint"`
		}{*to, start.Size() + 1, last, toCheckpointJSON(trailer)})
	}
	abs, err := filepath.Abs(*to)
	if err != nil {
		abs = *to
	}
	// The prune runs on the signer's store with its provider settings,
	// which only the signer's deployment knows: the command names them
	// rather than guess (plexsphere-signer refuses a store path that does
	// not exist rather than create an empty store).
	fmt.Fprintf(c.out, "exported entries %d..%d to %s (checkpoint size %d)\n"+
		"prune them with the signer's store and key provider settings in the environment (its SIGNER_* variables: the store, e.g. SIGNER_BBOLT_PATH\n"+
		"or SIGNER_POSTGRES_PRUNE_DSN_FILE, the KEK or token, SIGNER_CHECKPOINT_LOG; make run writes them to bin/run/signer.env), a bbolt store with the signer stopped:\n"+
		"  plexsphere-signer --prune-audit-upto %d --prune-audit-export %s\n",
		start.Size()+1, last, *to, trailer.Size, last, abs)
	return nil
}

// jwks prints the scope's published keys (PENDING, ACTIVE, PREVIOUS): what a
// verifier should trust. Always JSON.
func (c *cli) jwks(ctx context.Context, args []string) error {
	fs := c.flagSet("jwks", "<scope>", "Print the scope's published keys (PENDING, ACTIVE, PREVIOUS) as an RFC 8037 JWKS (kid = key id), whatever --output says.")
	pos, err := c.parse(fs, args, 1)
	if err != nil {
		return err
	}
	scope := pos[0]
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := signerv1.NewRotationServiceClient(cc).ListKeys(cctx, &signerv1.ListKeysRequest{Scope: scope})
	if err != nil {
		return err
	}
	if len(resp.Keys) == 0 {
		return unknownScope(scope, "")
	}
	// The signer's JWKS endpoint builds its set with the same function.
	keys := make([]store.Key, 0, len(resp.Keys))
	for _, k := range resp.Keys {
		keys = append(keys, store.Key{ID: k.KeyId, State: store.State(k.State), Public: k.PublicKey})
	}
	set := jwks.FromKeys(keys)
	if len(set.Keys) == 0 {
		return status.Errorf(codes.NotFound, "scope %q has no published key (every key is RETIRED)", scope)
	}
	return c.json(set)
}
