package auditlog_test

import (
	"fmt"

	"github.com/plexsphere/signer/client/auditlog"
)

// A signature's proof checked offline, with nothing but the log's verifier
// key (pinned from `signerctl audit checkpoint-key`) and the witness policy:
// the proof is what `signerctl audit prove --format tlog-proof <request-id>`
// prints. It shows what the log recorded for the signature (scope, key,
// outcome, the SHA-256 of payload and signature) and that the log's
// checkpoint holding it was cosigned by the witnesses, so the log cannot
// show anyone a history without it.
func Example_verifyProof() {
	const verifierKey = "example.org/plexsphere-signer+ae6aff2f+AfwnbFEKRLiNnlxFzEcRIgfAVVGiuqEh0smW8Qz/lERb"
	const policy = `witness witness.example.net witness.example.net+c9117e6c+BKuhRNCobjPL57LQpRW+azFU4oH7SGcdNPwqOLR/w93u https://witness.example.net
quorum witness.example.net
`
	const proof = `c2sp.org/tlog-proof@v1
extra AgMAAAAAAAAAAAAAAAAAAAABAgEIcGF5bWVudHMYa3EzdjV4cjJtNHQ3dzl5MXo2YjhjMGQyAQCAq5fb6vywBgEBAwMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
index 3
8TbiA1vZGdmBnZCmYa2XUq+6FItM8ZKspMKWvYAs1uI=
4LT9ezkK0+p7L/SzEu2wKg06+gw0Emw/FhCIcrujPE0=
7lbPu+Gbpsqr5Rbh5g3Qm56a2zhGPS/OnXiFvXfFnbw=

example.org/plexsphere-signer
5
RQRgqW9s9ZOp+xLFqMsJ70vld7K9ASWMlV4t+worACo=

— example.org/plexsphere-signer rmr/L1pWiq/j5U3+Le5KXMD9vHkZHnbW8lFZhWDKN5xzzRQt6NMCL+9emgFCW1TI/ohwjfMq2opsggbfHjb1rQX/ZQc=
— witness.example.net yRF+bAAAAABrFPZpc42AoqrVcSci7W/HTtLzjlGz4Z9xeGBclNM9R5xr44BrKAL8OZiDDs0s1AhkoP0kgmdSjDeyxWDQeu+EeEU7CQ==
`
	v, err := auditlog.NewVerifier(verifierKey)
	if err != nil {
		panic(err)
	}
	witnesses, err := auditlog.ParseWitnessPolicy([]byte(policy))
	if err != nil {
		panic(err)
	}
	e, cp, err := v.VerifyProof([]byte(proof), witnesses)
	if err != nil {
		fmt.Println("does not verify:", err)
		return
	}
	fmt.Println("entry", e.Seq, "of", cp.Origin, "at size", cp.Size, "cosigned by", witnesses.Cosigners(cp.Note))
	fmt.Println(e.Relation, e.Object, e.Reason, e.Code, e.Timestamp)
	fmt.Printf("payload sha256 %x...\n", e.PayloadSHA256[:2])
	// Output:
	// entry 4 of example.org/plexsphere-signer at size 5 cosigned by [witness.example.net]
	// sign signing-key:payments:kq3v5xr2m4t7w9y1z6b8c0d2 granted OK 2026-12-06 09:00:03 +0000 UTC
	// payload sha256 0300...
}
