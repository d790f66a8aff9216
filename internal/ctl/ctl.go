// Package ctl is signerctl: the operators' command line over mTLS (keys,
// rotation, audit, JWKS, load). Every command exits with a code a script can
// rely on (see Exit codes below and `signerctl -h`).
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Exit codes.
const (
	ExitOK          = 0 // done
	ExitRefused     = 1 // the signer refused (lifecycle, not found, invalid argument)
	ExitUsage       = 2 // bad command line or configuration
	ExitUnavailable = 3 // the signer could not be reached or could not serve
	ExitDenied      = 4 // this identity may not do that
	ExitBroken      = 5 // the audit log failed verification
)

const usage = `usage: signerctl [global flags] <command> [arguments]

commands:
  keys list [--scope S]                    list keys in every state
  rotate open <scope>                      open a rotation (new PENDING key)
  rotate commit <scope> <key-id>           make the PENDING key ACTIVE
  rotate abort <scope> <key-id>            retire the PENDING key unused
  rotate retire <scope> <key-id>           retire a PREVIOUS key
  audit tail [filters] [--follow]          print audit entries in commit order
  audit verify [--checkpoint FILE] [--after EXPORT]
                                           replay every entry against the signed checkpoints
                                           (and prove the log grew from a saved checkpoint)
  audit checkpoint                         print a fresh signed checkpoint (save it for verify)
  audit checkpoint-key                     print the log's checkpoint verifier key (pin it)
  audit prove <request-id|seq>             prove a request's entries are in the log
  audit export --to FILE [--after PREV] [--upto SEQ]
                                           write entries with their proof, ready to prune
  jwks <scope>                             the scope's published keys as a JWKS (RFC 8037)
  bench [--sidecar T] [--concurrency N] [--duration D | --count N] [--rate R] [--payload-size B] [--json]
                                           load a sidecar (or the signer over mTLS) and report
                                           throughput, p50/p90/p99/max and errors by code

exit codes: 0 ok, 1 refused by the signer, 2 usage, 3 signer unavailable,
4 permission denied, 5 audit log broken (naming the first bad seq or range).
`

// Main runs signerctl with args and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg config.Ctl
	fs := flag.NewFlagSet("signerctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := config.Bind(fs, "SIGNERCTL_", &cfg); err != nil {
		fmt.Fprintln(stderr, "signerctl:", err)
		return ExitUsage
	}
	inner := fs.Usage
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nglobal flags:\n"); inner() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return ExitUsage
	}
	c := &cli{cfg: cfg, out: stdout, errw: stderr}
	defer c.close()
	if rest[0] == "bench" { // through a sidecar, bench needs no identity
		return c.exit(c.runBench(ctx, rest[1:]))
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "signerctl: invalid configuration:\n%v\n", err)
		return ExitUsage
	}
	return c.dispatch(ctx, rest)
}

type cli struct {
	cfg  config.Ctl
	out  io.Writer
	errw io.Writer
	src  identity.Source
	cc   *grpc.ClientConn
}

// usageError is a command line mistake.
type usageError string

func (e usageError) Error() string { return string(e) }

func (c *cli) dispatch(ctx context.Context, args []string) int {
	var err error
	switch cmd := strings.Join(args[:min(2, len(args))], " "); {
	case cmd == "keys list":
		err = c.keysList(ctx, args[2:])
	case strings.HasPrefix(cmd, "rotate ") && len(args) >= 2:
		err = c.rotate(ctx, args[1], args[2:])
	case cmd == "audit tail":
		err = c.auditTail(ctx, args[2:])
	case cmd == "audit verify":
		err = c.auditVerify(ctx, args[2:])
	case cmd == "audit checkpoint":
		err = c.auditCheckpoint(ctx, args[2:])
	case cmd == "audit checkpoint-key":
		err = c.auditCheckpointKey(ctx, args[2:])
	case cmd == "audit prove":
		err = c.auditProve(ctx, args[2:])
	case cmd == "audit export":
		err = c.auditExport(ctx, args[2:])
	case args[0] == "jwks":
		err = c.jwks(ctx, args[1:])
	default:
		err = usageError(fmt.Sprintf("unknown command %q", strings.Join(args, " ")))
	}
	return c.exit(err)
}

// exit reports err and maps it to an exit code.
func (c *cli) exit(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue usageError
	var be brokenError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(c.errw, "signerctl: %v\n\n%s", err, usage)
		return ExitUsage
	case errors.As(err, &be):
		fmt.Fprintln(c.errw, "signerctl:", err)
		return ExitBroken
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintln(c.errw, "signerctl:", err)
		return ExitUnavailable
	}
	fmt.Fprintf(c.errw, "signerctl: %s: %s\n", st.Code(), st.Message())
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return ExitUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return ExitDenied
	}
	return ExitRefused
}

// reasonOf is the signer's wire reason on a failed call.
func reasonOf(err error) signerv1.ErrorReason {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return signerv1.ErrorReason(signerv1.ErrorReason_value[info.Reason])
		}
	}
	return signerv1.ErrorReason_ERROR_REASON_UNSPECIFIED
}

// conn dials the signer once with the operator identity.
func (c *cli) conn(ctx context.Context) (*grpc.ClientConn, error) {
	if c.cc != nil {
		return c.cc, nil
	}
	src, err := identity.Open(ctx, identity.Config{WorkloadAPIAddr: c.cfg.WorkloadAPIAddr, CertFile: c.cfg.SVIDCertFile,
		KeyFile: c.cfg.SVIDKeyFile, BundleFile: c.cfg.TrustBundleFile}, nil)
	if err != nil {
		return nil, err
	}
	c.src = src
	tlsCfg := identity.ClientTLS(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(c.cfg.SignerSPIFFEID)))
	c.cc, err = grpc.NewClient(c.cfg.Signer, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	return c.cc, err
}

func (c *cli) close() {
	if c.cc != nil {
		c.cc.Close()
	}
	if c.src != nil {
		c.src.Close()
	}
}

func (c *cli) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

func (c *cli) json(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// keyJSON is a key in JSON output.
type keyJSON struct {
	KeyID         string `json:"key_id"`
	Scope         string `json:"scope"`
	State         string `json:"state"`
	PublicKey     []byte `json:"public_key"`
	CreatedAt     string `json:"created_at"`
	ActivatedAt   string `json:"activated_at"`
	DeactivatedAt string `json:"deactivated_at"`
	RetiredAt     string `json:"retired_at"`
}

func stateName(s signerv1.KeyState) string {
	return strings.TrimPrefix(s.String(), "KEY_STATE_")
}

func toJSON(k *signerv1.Key) keyJSON {
	return keyJSON{KeyID: k.KeyId, Scope: k.Scope, State: stateName(k.State), PublicKey: k.PublicKey,
		CreatedAt: ts(k.CreatedAt), ActivatedAt: ts(k.ActivatedAt), DeactivatedAt: ts(k.DeactivatedAt), RetiredAt: ts(k.RetiredAt)}
}

func (c *cli) printKeys(keys []*signerv1.Key) error {
	if c.cfg.Output == "json" {
		out := make([]keyJSON, 0, len(keys))
		for _, k := range keys {
			out = append(out, toJSON(k))
		}
		return c.json(out)
	}
	var rows [][]string
	for _, k := range keys {
		j := toJSON(k)
		rows = append(rows, []string{j.Scope, j.KeyID, j.State, j.CreatedAt, j.ActivatedAt, j.DeactivatedAt, j.RetiredAt})
	}
	c.table("SCOPE\tKEY ID\tSTATE\tCREATED\tACTIVATED\tDEACTIVATED\tRETIRED", rows)
	return nil
}

func (c *cli) keysList(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keys list", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	scope := fs.String("scope", "", "only this scope")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return usageError("keys list takes only --scope")
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := signerv1.NewRotationServiceClient(cc).ListKeys(cctx, &signerv1.ListKeysRequest{Scope: *scope})
	if err != nil {
		return err
	}
	return c.printKeys(resp.Keys)
}

func (c *cli) rotate(ctx context.Context, op string, args []string) error {
	want := 2
	if op == "open" {
		want = 1
	}
	if len(args) != want {
		return usageError(fmt.Sprintf("rotate %s takes %d argument(s)", op, want))
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	rot := signerv1.NewRotationServiceClient(cc)
	cctx, cancel := c.call(ctx)
	defer cancel()
	var keys []*signerv1.Key
	switch op {
	case "open":
		r, err := rot.Open(cctx, &signerv1.OpenRequest{Scope: args[0]})
		if err != nil {
			return err
		}
		keys = []*signerv1.Key{r.Key}
		if c.cfg.Output == "table" {
			defer fmt.Fprintf(c.out, "committable at %s\n", ts(r.CommittableAt))
		}
	case "commit":
		r, err := rot.Commit(cctx, &signerv1.CommitRequest{Scope: args[0], KeyId: args[1]})
		if err != nil {
			return err
		}
		keys = []*signerv1.Key{r.Activated}
		if r.Previous != nil {
			keys = append(keys, r.Previous)
		}
	case "abort":
		r, err := rot.Abort(cctx, &signerv1.AbortRequest{Scope: args[0], KeyId: args[1]})
		if err != nil {
			return err
		}
		keys = []*signerv1.Key{r.Key}
	case "retire":
		r, err := rot.Retire(cctx, &signerv1.RetireRequest{Scope: args[0], KeyId: args[1]})
		if err != nil {
			return err
		}
		keys = []*signerv1.Key{r.Key}
	default:
		return usageError(fmt.Sprintf("unknown rotate step %q", op))
	}
	return c.printKeys(keys)
}
