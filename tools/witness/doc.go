// Package witness pins the C2SP tlog-witness the tests run: omniwitness from
// github.com/transparency-dev/witness, built as a Go tool in this module of
// its own so that its dependencies (newer formats, merkle and x/mod, OTel,
// modernc sqlite) never enter the main module's build list. Pure Go: it
// builds with CGO_ENABLED=0. Build with `make witness`.
package witness
