// Package ctl is signerctl: the operators' command line over mTLS (keys,
// rotation, audit, JWKS, load). Every command exits with a code a script can
// rely on (see Exit codes below and `signerctl -h`).
package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/version"
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
	// ExitRestored: the log was restored behind a checkpoint the operator
	// saved (audit verify --checkpoint): what the log holds may verify, but
	// entries that checkpoint covers are gone. Not 5: the log is not
	// broken, it is in a later epoch that says what it lost.
	ExitRestored = 6
)

const usage = `usage: signerctl [global flags] <command> [arguments]

commands:
  keys list [--scope S]                    list keys in every state (an unknown --scope is NotFound);
                                           keys alone is keys list
  keys export [--key-id ID | --state active|pending|previous|all] [--format pem|json] [--out FILE] <scope>
                                           the scope's public keys as PEM PUBLIC KEY blocks (SPKI) for
                                           openssl, cosign and the like: the ACTIVE key by default;
                                           never a RETIRED one (not published: refused, exit 1)
  rotate open [--create] <scope>           open a rotation (new PENDING key); a scope without keys
                                           is refused (NotFound) unless --create says to create it
  rotate commit <scope> <key-id>           make the PENDING key ACTIVE
  rotate abort <scope> <key-id>            retire the PENDING key unused
  rotate retire <scope> <key-id>           retire a PREVIOUS key
  audit tail [--limit N] [--after SEQ] [filters] [--follow]
                                           print the newest N entries (100), oldest first, or those
                                           after SEQ; --follow then prints new ones as they come;
                                           its own reads are left out unless --include-own
  audit verify [--checkpoint FILE] [--after EXPORT]
                                           replay every entry against the signed checkpoints, prove
                                           the log grew from a saved checkpoint (one of an earlier
                                           epoch: exit 6 if the restore lost entries it covers) and,
                                           with --witness-policy, that the witnesses cosigned it all
  audit checkpoint [--witnessed]           print a fresh signed checkpoint (save it for verify), or
                                           the newest one the witnesses cosigned
  audit checkpoint-key                     print the log's checkpoint verifier key (pin it)
  audit prove [--size N] [--format text|json|tlog-proof] [--out FILE] <request-id> | --seq N
                                           prove a request's entries (or one seq) are in the log's
                                           checkpoint (of --size, default the newest: cosigned when
                                           the log has witnesses); tlog-proof: a C2SP tlog-proof of
                                           the request's outcome entry, to verify offline
  audit consistency [--format text|json] OLD [NEW] | --from FILE [NEW]
                                           prove the stored checkpoint of size OLD (or the saved one
                                           in --from FILE) is a prefix of the one of size NEW
                                           (default: the newest)
  audit export --to FILE [--after PREV] [--upto SEQ]
                                           write entries with their proof, ready to prune
  jwks <scope>                             the scope's published keys as a JWKS (RFC 8037)
  bench [--sidecar T] [--concurrency N] [--duration D | --count N] [--rate R] [--payload-size B]
                                           load a sidecar (or the signer over mTLS) and report
                                           throughput, p50/p90/p99/max and errors by code
  help [command]                           this text, or a command's flags (also: <command> --help)
  version                                  which build this is (also: --version)

exit codes: 0 ok (help and --help too: they need no settings and send nothing),
1 refused by the signer (NotFound, not ready, invalid argument, rotation in progress;
keys export: a RETIRED key),
2 usage or configuration (a missing setting; an SVID, key or bundle file that is missing,
does not load, has expired or does not chain; a signer certificate the bundle does not
verify; a wrong --signer-spiffe-id: each naming its flag and variable), 3 signer
unavailable, 4 permission denied (naming the signer's allow-list), 5 audit log broken (naming the first bad seq or range, or the
witnesses' missing cosignatures), 6 the log was restored behind the saved checkpoint
(audit verify --checkpoint: the epoch record says what the restore lost).

--output json prints JSON: times in RFC 3339, UTC, with microseconds, null when
absent; the same field names in every command (README: signerctl output); bench --json
is another spelling of it.
--witness-policy FILE (SIGNERCTL_WITNESS_POLICY_FILE) is the signer's witness policy:
with it, audit commands check the witnesses' cosignatures, not only the log's signature.
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
	showVersion := fs.Bool("version", false, "print signerctl's version, commit and Go version, and exit")
	inner := fs.Usage
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nglobal flags:\n"); inner() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	rest := fs.Args()
	if *showVersion || (len(rest) == 1 && rest[0] == "version") { // nothing is sent
		fmt.Fprintln(stdout, version.Get().String("signerctl"))
		return ExitOK
	}
	if len(rest) == 0 {
		fs.Usage()
		return ExitUsage
	}
	// Checked here, reported when a command dials (conn): help, a
	// command's --help and bench through a sidecar need no identity, and
	// nothing is sent with a configuration that does not validate.
	c := &cli{cfg: cfg, cfgErr: cfg.Validate(), out: stdout, errw: stderr}
	defer c.close()
	if rest[0] == "help" { // nothing is sent
		if len(rest) == 1 {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, usage, "\nglobal flags:\n")
			inner()
			return ExitOK
		}
		return c.dispatch(ctx, append(rest[1:len(rest):len(rest)], "--help"))
	}
	return c.dispatch(ctx, rest)
}

type cli struct {
	cfg    config.Ctl
	cfgErr error // cfg.Validate's, returned by conn
	out    io.Writer
	errw   io.Writer
	src    identity.Source
	cc     *grpc.ClientConn

	// presented is the SPIFFE ID a signer presented that is not
	// --signer-spiffe-id: the handshake failed, and exit says which flag.
	presented atomic.Pointer[string]
	// untrusted is why the signer's certificate did not verify against
	// the trust bundle: a configuration mistake, not an outage.
	untrusted atomic.Pointer[string]
}

// usageError is a command line mistake.
type usageError string

func (e usageError) Error() string { return string(e) }

// configError is a setting that is missing, wrong or names a file that
// does not load; its text names the setting.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// configErrorf is a configError about the setting field of config.Ctl.
func (c *cli) configErrorf(field, format string, args ...any) error {
	return configError{config.Errorf(&c.cfg, field, format, args...)}
}

// errHelp: a command's --help printed its usage; nothing was sent.
var errHelp = errors.New("help requested")

// isHelp is a help flag as package flag knows it.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--h", "--help":
		return true
	}
	return false
}

// flagSet is a command's flags; its usage (-h, --help, help <command>)
// says what the command takes and does, then its flags.
func (c *cli) flagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.errw)
	fs.Usage = func() {
		fmt.Fprintf(c.errw, "usage: signerctl [global flags] %s %s\n\n%s\n", name, synopsis, about)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(c.errw, "\nflags:")
			fs.PrintDefaults()
		}
		fmt.Fprintln(c.errw, "\nglobal flags (before the command): signerctl -h")
	}
	return fs
}

// parse parses a command's flags, before, between or after its positional
// arguments, and wants exactly n of those (any number for n < 0). --help
// is errHelp: the usage is printed and the command stops before it sends
// anything (a request id or scope of "--help" is never sent).
func (c *cli) parse(fs *flag.FlagSet, args []string, n int) ([]string, error) {
	pos, err := parseMixed(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil, errHelp
	case err != nil:
		return nil, usageError(fmt.Sprintf("%s: %v", fs.Name(), err))
	case n >= 0 && len(pos) != n:
		return nil, usageError(fmt.Sprintf("%s takes %d argument(s), not %d (signerctl %s --help)", fs.Name(), n, len(pos), fs.Name()))
	}
	return pos, nil
}

// groupUsage is the part of the usage about the commands of group: its
// command lines and their continuation lines.
func groupUsage(group string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: signerctl [global flags] %s <command> [arguments]\n\ncommands:\n", group)
	in := false
	for _, line := range strings.Split(usage, "\n") {
		switch {
		case strings.HasPrefix(line, "  "+group+" "):
			in = true
		case !strings.HasPrefix(line, "    "):
			in = false
		}
		if in {
			fmt.Fprintln(&b, line)
		}
	}
	fmt.Fprintf(&b, "\na command's flags: signerctl %s <command> --help; global flags: signerctl -h\n", group)
	return b.String()
}

// groups are the commands that take a subcommand.
var groups = map[string]bool{"keys": true, "rotate": true, "audit": true}

func (c *cli) dispatch(ctx context.Context, args []string) int {
	if groups[args[0]] {
		switch {
		case len(args) > 1 && isHelp(args[1]):
			fmt.Fprint(c.errw, groupUsage(args[0]))
			return ExitOK
		case args[0] == "keys" && (len(args) == 1 || strings.HasPrefix(args[1], "-")):
			// `signerctl keys` lists, as `keys list` does.
			args = append([]string{"keys", "list"}, args[1:]...)
		case len(args) == 1:
			fmt.Fprintf(c.errw, "signerctl: %s takes a command\n\n%s", args[0], groupUsage(args[0]))
			return ExitUsage
		}
	}
	var err error
	switch cmd := strings.Join(args[:min(2, len(args))], " "); {
	case cmd == "keys list":
		err = c.keysList(ctx, args[2:])
	case cmd == "keys export":
		err = c.keysExport(ctx, args[2:])
	case args[0] == "rotate":
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
	case cmd == "audit consistency":
		err = c.auditConsistency(ctx, args[2:])
	case cmd == "audit export":
		err = c.auditExport(ctx, args[2:])
	case args[0] == "jwks":
		err = c.jwks(ctx, args[1:])
	case args[0] == "bench":
		err = c.runBench(ctx, args[1:])
	case groups[args[0]]:
		fmt.Fprintf(c.errw, "signerctl: unknown command %q\n\n%s", cmd, groupUsage(args[0]))
		return ExitUsage
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
	var ce configError
	var be brokenError
	var re restoredError
	switch {
	case errors.Is(err, errHelp): // the command printed its usage
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(c.errw, "signerctl: %v\n\n%s", err, usage)
		return ExitUsage
	case errors.As(err, &ce):
		fmt.Fprintf(c.errw, "signerctl: invalid configuration:\n%v\n", err)
		return ExitUsage
	case errors.As(err, &be):
		fmt.Fprintln(c.errw, "signerctl:", err)
		return ExitBroken
	case errors.As(err, &re):
		fmt.Fprintln(c.errw, "signerctl:", err)
		return ExitRestored
	}
	if id := c.presented.Load(); id != nil {
		// A configuration mistake, not an outage: say which setting.
		fmt.Fprintf(c.errw, "signerctl: the signer at %s presents SPIFFE ID %s, not %s: set %s to the signer's ID\n",
			c.cfg.Signer, *id, c.cfg.SignerSPIFFEID, config.Name(&c.cfg, "SignerSPIFFEID"))
		return ExitUsage
	}
	if why := c.untrusted.Load(); why != nil {
		fmt.Fprintf(c.errw, "signerctl: the signer at %s presents a certificate that does not verify against %s: %s: set it to the trust bundle of the signer's trust domain\n",
			c.cfg.Signer, c.bundleSetting(), *why)
		return ExitUsage
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintln(c.errw, "signerctl:", err)
		return ExitUnavailable
	}
	msg := st.Message()
	if st.Code() == codes.Unavailable && strings.Contains(msg, "remote error: tls:") {
		// The signer ended the handshake: it does not trust this
		// identity's certificate (another CA, or expired).
		fmt.Fprintf(c.errw, "signerctl: the signer at %s refused this identity's certificate (%s): is %s issued by a CA in the signer's trust bundle, and current?\n",
			c.cfg.Signer, msg, c.identitySetting())
		return ExitUsage
	}
	info := errorInfo(err)
	if info != nil && info.Reason == signerv1.ErrorReason_ERROR_REASON_ROTATION_NOT_READY.String() {
		if at, perr := time.Parse(time.RFC3339Nano, info.Metadata["ready_at"]); perr == nil {
			if wait := time.Until(at); wait > 0 {
				msg += fmt.Sprintf(" (in %s)", wait.Round(time.Second))
			}
		}
	}
	fmt.Fprintf(c.errw, "signerctl: %s: %s\n", st.Code(), msg)
	if info != nil && info.Reason == signerv1.ErrorReason_ERROR_REASON_CLIENT_IDENTITY_DENIED.String() {
		fmt.Fprintln(c.errw, c.deniedHint())
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return ExitUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return ExitDenied
	}
	return ExitRefused
}

// deniedHint says which identity was denied and which of the signer's
// allow-lists admits operators: the signer's answer is the pinned
// "signing: client identity denied" and nothing more.
func (c *cli) deniedHint() string {
	who := "this identity"
	if c.src != nil {
		if svid, err := c.src.GetX509SVID(); err == nil {
			who = svid.ID.String()
		}
	}
	var signer config.Signer
	return fmt.Sprintf("signerctl: the signer does not admit %s (%s) here: operators (keys, rotate, jwks, audit) are admitted by the signer's %s;"+
		" auditors (audit commands only) by its %s",
		who, c.identitySetting(), config.Name(&signer, "RotationAllowSPIFFEIDs"), config.Name(&signer, "AuditorAllowSPIFFEIDs"))
}

// identitySetting names where this identity comes from.
func (c *cli) identitySetting() string {
	if c.cfg.WorkloadAPIAddr != "" {
		return "the SVID from " + config.Name(&c.cfg, "WorkloadAPIAddr")
	}
	return fmt.Sprintf("%s (%s)", config.Name(&c.cfg, "SVIDCertFile"), c.cfg.SVIDCertFile)
}

// bundleSetting names where the trust bundle comes from.
func (c *cli) bundleSetting() string {
	if c.cfg.WorkloadAPIAddr != "" {
		return "the trust bundle from " + config.Name(&c.cfg, "WorkloadAPIAddr")
	}
	return fmt.Sprintf("%s (%s)", config.Name(&c.cfg, "TrustBundleFile"), c.cfg.TrustBundleFile)
}

// errorInfo is the signer's ErrorInfo on a failed call, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
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

// conn dials the signer once with the operator identity. Every setting
// and identity file is checked before: a mistake there is a configuration
// error naming the setting (exit 2), not an unreachable signer.
func (c *cli) conn(ctx context.Context) (*grpc.ClientConn, error) {
	if c.cc != nil {
		return c.cc, nil
	}
	if c.cfgErr != nil {
		return nil, configError{c.cfgErr}
	}
	src, err := c.openIdentity(ctx)
	if err != nil {
		return nil, err
	}
	c.src = src
	want, err := spiffeid.FromString(c.cfg.SignerSPIFFEID)
	if err != nil {
		return nil, c.configErrorf("SignerSPIFFEID", "%v", err)
	}
	authorize := func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id != want {
			presented := id.String()
			c.presented.Store(&presented)
			return fmt.Errorf("the signer presents %s, not %s (%s)", id, want, config.Name(&c.cfg, "SignerSPIFFEID"))
		}
		return nil
	}
	tlsCfg := identity.ClientTLS(src, authorize)
	verify := tlsCfg.VerifyConnection
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil && c.presented.Load() == nil {
			why := err.Error()
			c.untrusted.Store(&why)
		}
		return err
	}
	c.cc, err = grpc.NewClient(c.cfg.Signer, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, c.configErrorf("Signer", "%v", err)
	}
	return c.cc, nil
}

// openIdentity loads the operator identity. From files, each is read
// first so that a missing or unreadable one is named by its setting; an
// SVID that has expired is refused here rather than by the signer's
// handshake.
func (c *cli) openIdentity(ctx context.Context) (identity.Source, error) {
	id := c.cfg.Identity
	if id.WorkloadAPIAddr == "" {
		for _, f := range []struct{ field, path string }{
			{"SVIDCertFile", id.SVIDCertFile}, {"SVIDKeyFile", id.SVIDKeyFile}, {"TrustBundleFile", id.TrustBundleFile},
		} {
			if _, err := os.ReadFile(f.path); err != nil {
				return nil, c.configErrorf(f.field, "%v", err)
			}
		}
		src, err := identity.Open(ctx, id, nil)
		if err != nil {
			return nil, configError{fmt.Errorf("%s: %w", id.Settings(&c.cfg), err)}
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			src.Close()
			return nil, configError{fmt.Errorf("%s: %w", id.Settings(&c.cfg), err)}
		}
		if len(svid.Certificates) > 0 && time.Now().After(svid.Certificates[0].NotAfter) {
			src.Close()
			return nil, c.configErrorf("SVIDCertFile", "the SVID in %s (%s) expired at %s: renew it",
				id.SVIDCertFile, svid.ID, svid.Certificates[0].NotAfter.UTC().Format(TimeFormat))
		}
		// The signer verifies this SVID against the bundle of its trust
		// domain, which with files is the same bundle: one that does not
		// chain here would only fail as a broken handshake there.
		if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
			src.Close()
			return nil, c.configErrorf("SVIDCertFile", "the SVID in %s (%s) does not chain to %s (%s): %v",
				id.SVIDCertFile, svid.ID, config.Name(&c.cfg, "TrustBundleFile"), id.TrustBundleFile, err)
		}
		return src, nil
	}
	// The Workload API is waited for as long as one call may take, not
	// for ever: an agent that gives no SVID is reported, with the setting.
	octx, cancel := c.call(ctx)
	defer cancel()
	src, err := identity.Open(octx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: no SVID within %s (is the SPIRE agent there, and is this workload registered?): %w",
			config.Name(&c.cfg, "WorkloadAPIAddr"), c.cfg.Timeout, err)
	}
	return src, nil
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

// TimeFormat is how every time is printed, in tables and JSON: RFC 3339 in
// UTC with microseconds, the precision the signer stores.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// jsonTime is a time in JSON output: a string, or null when absent.
func jsonTime(t *timestamppb.Timestamp) *string {
	if t == nil {
		return nil
	}
	s := t.AsTime().UTC().Format(TimeFormat)
	return &s
}

// tableTime is a time in a table: "-" when absent.
func tableTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(TimeFormat)
}

// keyJSON is a key in every command's JSON output.
type keyJSON struct {
	KeyID         string  `json:"key_id"`
	Scope         string  `json:"scope"`
	State         string  `json:"state"`
	PublicKey     []byte  `json:"public_key"`
	CreatedAt     *string `json:"created_at"`
	ActivatedAt   *string `json:"activated_at"`
	DeactivatedAt *string `json:"deactivated_at"`
	RetiredAt     *string `json:"retired_at"`
}

func stateName(s signerv1.KeyState) string {
	return strings.TrimPrefix(s.String(), "KEY_STATE_")
}

func toJSON(k *signerv1.Key) *keyJSON {
	if k == nil {
		return nil
	}
	return &keyJSON{KeyID: k.KeyId, Scope: k.Scope, State: stateName(k.State), PublicKey: k.PublicKey,
		CreatedAt: jsonTime(k.CreatedAt), ActivatedAt: jsonTime(k.ActivatedAt), DeactivatedAt: jsonTime(k.DeactivatedAt), RetiredAt: jsonTime(k.RetiredAt)}
}

func (c *cli) keyTable(keys []*signerv1.Key) {
	var rows [][]string
	for _, k := range keys {
		rows = append(rows, []string{k.Scope, k.KeyId, stateName(k.State), tableTime(k.CreatedAt), tableTime(k.ActivatedAt),
			tableTime(k.DeactivatedAt), tableTime(k.RetiredAt)})
	}
	c.table("SCOPE\tKEY ID\tSTATE\tCREATED\tACTIVATED\tDEACTIVATED\tRETIRED", rows)
}

func (c *cli) keysList(ctx context.Context, args []string) error {
	fs := c.flagSet("keys list", "[--scope S]", "List keys in every state (an unknown --scope is NotFound).")
	scope := fs.String("scope", "", "only this scope")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	keys, err := c.listKeys(ctx, *scope)
	if err != nil {
		return err
	}
	if *scope != "" && len(keys) == 0 {
		return unknownScope(*scope, "")
	}
	if c.cfg.Output == "json" {
		out := make([]*keyJSON, 0, len(keys))
		for _, k := range keys {
			out = append(out, toJSON(k))
		}
		return c.json(out)
	}
	c.keyTable(keys)
	return nil
}

func (c *cli) listKeys(ctx context.Context, scope string) ([]*signerv1.Key, error) {
	cc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := signerv1.NewRotationServiceClient(cc).ListKeys(cctx, &signerv1.ListKeysRequest{Scope: scope})
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

// unknownScope is the NotFound a command reports for a scope the signer has
// no keys for (ListKeys answers such a scope with an empty list).
func unknownScope(scope, hint string) error {
	return status.Errorf(codes.NotFound, "scope %q has no keys%s", scope, hint)
}

// parseMixed parses flags that may come before, between or after the
// positional arguments ("rotate open payments --create").
func parseMixed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// pendingHint adds to a refused Open which key is PENDING and the two
// commands that close the rotation: the signer's answer is the sentinel's
// text ("signing: rotation in progress") and names no key.
func (c *cli) pendingHint(ctx context.Context, err error, scope string) error {
	if reasonOf(err) != signerv1.ErrorReason_ERROR_REASON_ROTATION_IN_PROGRESS {
		return err
	}
	keys, lerr := c.listKeys(ctx, scope)
	if lerr != nil {
		return err
	}
	for _, k := range keys {
		if k.State == signerv1.KeyState_KEY_STATE_PENDING {
			st := status.Convert(err)
			return status.Errorf(st.Code(), "%s: scope %q has PENDING key %s (created %s); finish that rotation first: signerctl rotate commit %s %s, or signerctl rotate abort %s %s",
				st.Message(), scope, k.KeyId, tableTime(k.CreatedAt), scope, k.KeyId, scope, k.KeyId)
		}
	}
	return err
}

// rotateJSON is the JSON output of every rotate step: the key it moved,
// the key a commit demoted (null otherwise) and, for open only, when Commit
// will accept the new key.
type rotateJSON struct {
	Step          string   `json:"step"`
	Key           *keyJSON `json:"key"`
	CommittableAt *string  `json:"committable_at,omitempty"`
	Previous      *keyJSON `json:"previous"`
}

// rotateAbout says what each rotate step does (its --help).
var rotateAbout = map[string]string{
	"open":   "Open a rotation: a new PENDING key, published at once. A scope without keys is refused (NotFound) unless --create.",
	"commit": "Make the PENDING key ACTIVE (after the pre-publication window); the ACTIVE one becomes PREVIOUS.",
	"abort":  "Retire the PENDING key unused.",
	"retire": "Retire a PREVIOUS key (after the verify-only window).",
}

func (c *cli) rotate(ctx context.Context, op string, args []string) error {
	want, synopsis, about := 2, "<scope> <key-id>", rotateAbout[op]
	if op == "open" {
		want, synopsis = 1, "[--create] <scope>"
	}
	if about == "" {
		return usageError(fmt.Sprintf("unknown rotate step %q", op))
	}
	fs := c.flagSet("rotate "+op, synopsis, about)
	create := false
	if op == "open" {
		fs.BoolVar(&create, "create", false, "create the scope if it has no keys yet (its first key is then PENDING until committed)")
	}
	pos, err := c.parse(fs, args, want)
	if err != nil {
		return err
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	rot := signerv1.NewRotationServiceClient(cc)
	out := rotateJSON{Step: op}
	var keys []*signerv1.Key
	var committable *timestamppb.Timestamp
	switch op {
	case "open":
		if !create {
			// Never create a scope by a typo: Open on a scope without
			// keys makes a new one, so that takes --create.
			existing, err := c.listKeys(ctx, pos[0])
			if err != nil {
				return err
			}
			if len(existing) == 0 {
				return unknownScope(pos[0], "; to create it, run: signerctl rotate open --create "+pos[0])
			}
		}
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := rot.Open(cctx, &signerv1.OpenRequest{Scope: pos[0]})
		if err != nil {
			return c.pendingHint(ctx, err, pos[0])
		}
		keys, committable = []*signerv1.Key{r.Key}, r.CommittableAt
		out.Key, out.CommittableAt = toJSON(r.Key), jsonTime(r.CommittableAt)
	case "commit":
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := rot.Commit(cctx, &signerv1.CommitRequest{Scope: pos[0], KeyId: pos[1]})
		if err != nil {
			return err
		}
		keys = []*signerv1.Key{r.Activated}
		if r.Previous != nil {
			keys = append(keys, r.Previous)
		}
		out.Key, out.Previous = toJSON(r.Activated), toJSON(r.Previous)
	case "abort":
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := rot.Abort(cctx, &signerv1.AbortRequest{Scope: pos[0], KeyId: pos[1]})
		if err != nil {
			return err
		}
		keys, out.Key = []*signerv1.Key{r.Key}, toJSON(r.Key)
	case "retire":
		cctx, cancel := c.call(ctx)
		defer cancel()
		r, err := rot.Retire(cctx, &signerv1.RetireRequest{Scope: pos[0], KeyId: pos[1]})
		if err != nil {
			return err
		}
		keys, out.Key = []*signerv1.Key{r.Key}, toJSON(r.Key)
	default:
		return usageError(fmt.Sprintf("unknown rotate step %q", op))
	}
	if c.cfg.Output == "json" {
		return c.json(out)
	}
	c.keyTable(keys)
	if committable != nil {
		fmt.Fprintf(c.out, "committable at %s\n", tableTime(committable))
	}
	return nil
}
