package ctl

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

type entryJSON struct {
	Seq             uint64   `json:"seq"`
	Timestamp       string   `json:"timestamp"`
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
	Hash            string   `json:"hash"`
}

func (c *cli) auditTail(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit tail", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	after := fs.Uint64("after", 0, "only entries with seq above this")
	limit := fs.Uint("limit", 100, "at most this many entries (per poll with --follow)")
	subject := fs.String("subject", "", "exact subject")
	relation := fs.String("relation", "", "exact relation (connect, sign, public_key, rotate, audit_read)")
	reason := fs.String("reason", "", "exact reason (granted, insufficient_relation, caveat_violation)")
	prefix := fs.String("object-prefix", "", "object prefix, e.g. signing-key:payments:")
	follow := fs.Bool("follow", false, "keep polling for new entries until interrupted")
	every := fs.Duration("every", 2*time.Second, "poll interval with --follow")
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
	for {
		cctx, cancel := c.call(ctx)
		resp, err := a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: next, Limit: uint32(*limit), Subject: *subject,
			Relation: *relation, Reason: *reason, ObjectPrefix: *prefix})
		cancel()
		if err != nil {
			return err
		}
		c.printEntries(resp.Entries, header)
		header = false
		if n := len(resp.Entries); n > 0 {
			next = resp.Entries[n-1].Seq
		}
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
			if e.CaveatContext == nil {
				e.CaveatContext = []string{} // the contract: always an empty list, never null
			}
			c.json(entryJSON{Seq: e.Seq, Timestamp: ts(e.Timestamp), Subject: e.Subject, Relation: e.Relation, Object: e.Object,
				Reason: e.Reason, CaveatContext: e.CaveatContext, Method: e.Method, Code: e.Code, RequestID: e.RequestId,
				PayloadSHA256: e.PayloadSha256, SignatureSHA256: e.SignatureSha256, Hash: e.Hash})
		}
		return
	}
	var rows [][]string
	for _, e := range es {
		rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), e.Timestamp.AsTime().UTC().Format(time.RFC3339Nano),
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

// brokenError is a failed chain verification.
type brokenError struct{ msg string }

func (e brokenError) Error() string { return e.msg }

func (c *cli) auditVerify(ctx context.Context) error {
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*c.cfg.Timeout) // walks the whole log
	defer cancel()
	r, err := signerv1.NewAuditServiceClient(cc).Verify(cctx, &signerv1.VerifyAuditRequest{})
	if err != nil {
		return err
	}
	if c.cfg.Output == "json" {
		c.json(map[string]any{"ok": r.Ok, "entries": r.Entries, "broken_at_seq": r.BrokenAtSeq, "problem": r.Problem})
	} else if r.Ok {
		fmt.Fprintf(c.out, "audit chain intact: %d entries\n", r.Entries)
	}
	if !r.Ok {
		return brokenError{fmt.Sprintf("audit chain broken at seq %d after %d good entries: %s", r.BrokenAtSeq, r.Entries, r.Problem)}
	}
	return nil
}

// jwk is an RFC 8037 OKP key.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
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
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	for _, k := range resp.Keys {
		switch k.State {
		case signerv1.KeyState_KEY_STATE_PENDING, signerv1.KeyState_KEY_STATE_ACTIVE, signerv1.KeyState_KEY_STATE_PREVIOUS:
			set.Keys = append(set.Keys, jwk{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k.PublicKey),
				Kid: k.KeyId, Use: "sig", Alg: "EdDSA"})
		}
	}
	return c.json(set)
}
