package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/pgtest"
)

// Images the scenarios run (scripts/build-images.sh).
const (
	signerImage  = "plexsphere/signer:dev"
	sidecarImage = "plexsphere/sidecar:dev"
	coreImage    = "plexsphere/example-core:dev"
	pauseImage   = "plexsphere/pause:dev"
	hsmImage     = "plexsphere/signer-pkcs11:dev"
)

const (
	td         = "example.org"
	signerID   = "spiffe://example.org/ns/plexsphere/sa/plexsphere-signer"
	coreID     = "spiffe://example.org/ns/plexsphere/sa/plexsphere-core"
	offNetID   = "spiffe://example.org/ns/plexsphere/sa/plexsphere-core-offnet"
	intruderID = "spiffe://example.org/ns/other/sa/intruder"
	operatorID = "spiffe://example.org/ns/plexsphere/sa/signer-operator"
)

func init() {
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
}

// requireImages skips (fails under CI=true) when Docker or an image is
// missing.
func requireImages(t *testing.T) {
	t.Helper()
	why := pgtest.Unavailable(context.Background())
	if why == "" {
		p, err := testcontainers.NewDockerProvider()
		if err == nil {
			defer p.Close()
			for _, img := range []string{signerImage, sidecarImage, coreImage, pauseImage, hsmImage} {
				if _, err := p.Client().ImageInspect(context.Background(), img); err != nil {
					why = "image " + img + " is missing: run `make images`"
					break
				}
			}
		}
	}
	testenv.Require(t, "the container e2e", why)
}

// pki writes the SVIDs and KEK every container mounts read-only at /id.
func pki(t *testing.T) (string, *devpki.CA) {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	ca, err := devpki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"signer": signerID, "core": coreID, "offnet": offNetID, "intruder": intruderID, "operator": operatorID} {
		svid, err := ca.Issue(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.WriteFiles(dir, name, svid); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "kek"), []byte(strings.Repeat("ab", 32)), 0o644)
	// The containers run as uid 65532; these are throwaway test keys.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.Chmod(filepath.Join(dir, e.Name()), 0o644)
	}
	// The signer refuses a world-readable KEK: owned by the containers'
	// uid, readable by it only.
	os.Chown(filepath.Join(dir, "kek"), 65532, 65532)
	os.Chmod(filepath.Join(dir, "kek"), 0o400)
	return dir, ca
}

// run starts a container and removes it when the test ends; on failure its
// log is shown.
func run(t *testing.T, name, image string, opts ...testcontainers.ContainerCustomizer) *testcontainers.DockerContainer {
	t.Helper()
	c, err := testcontainers.Run(context.Background(), image, append([]testcontainers.ContainerCustomizer{testcontainers.WithName(name + "-" + suffix(t))}, opts...)...)
	if err != nil {
		if c != nil {
			testcontainers.TerminateContainer(c)
		}
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, logs(t, c))
		}
		testcontainers.TerminateContainer(c)
	})
	return c
}

func suffix(t *testing.T) string {
	h := sha256.Sum256([]byte(t.Name() + fmt.Sprint(time.Now().UnixNano())))
	return hex.EncodeToString(h[:4])
}

func logs(t *testing.T, c *testcontainers.DockerContainer) string {
	r, err := c.Logs(context.Background())
	if err != nil {
		return err.Error()
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return string(b)
}

func mountID(dir string) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.Binds = append(hc.Binds, dir+":/id:ro")
	})
}

// inPod joins the network namespace of the pod's sidecar.
func inPod(sidecar *testcontainers.DockerContainer) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.NetworkMode = container.NetworkMode("container:" + sidecar.GetContainerID())
	})
}

// topology is Postgres and signer replicas on their own network.
type topology struct {
	dir     string
	ca      *devpki.CA
	net     *testcontainers.DockerNetwork
	pg      *testcontainers.DockerContainer
	signers []*testcontainers.DockerContainer
}

// pgDSN connects from the host; the published port changes when Postgres
// restarts, so it is looked up each time.
func (tp *topology) pgDSN(t *testing.T) string {
	t.Helper()
	port, err := tp.pg.MappedPort(context.Background(), "5432/tcp")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://postgres:pw@127.0.0.1:%s/signer?sslmode=disable", port.Port())
}

// signerSpec adjusts the signer containers of a topology.
type signerSpec struct {
	image string
	env   map[string]string
	binds []string // host:container[:mode]
}

func startTopology(t *testing.T, replicas int, adjust ...func(*signerSpec)) *topology {
	t.Helper()
	requireImages(t)
	ctx := context.Background()
	tp := &topology{}
	tp.dir, tp.ca = pki(t)
	nw, err := network.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nw.Remove(context.Background()) })
	tp.net = nw
	tp.pg = run(t, "postgres", pgtest.Image,
		network.WithNetwork([]string{"postgres"}, nw),
		testcontainers.WithEnv(map[string]string{"POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "signer"}),
		testcontainers.WithExposedPorts("5432/tcp"),
		testcontainers.WithWaitStrategy(wait.ForLog("database system is ready to accept connections").WithStartupTimeout(60*time.Second)))
	// The replicas' checkpoint file: a directory outside the database that
	// every replica (uid 65532) appends its own file to and reads them all
	// from, as the chart's shared claim does.
	anchor := t.TempDir()
	must(t, os.Chmod(anchor, 0o777))
	spec := signerSpec{image: signerImage, env: map[string]string{}, binds: []string{anchor + ":/anchor"}}
	for _, f := range adjust {
		f(&spec)
	}
	for i := 1; i <= replicas; i++ {
		alias := fmt.Sprintf("signer-%d", i)
		env := map[string]string{
			"SIGNER_LISTEN":       ":8443",
			"SIGNER_OPS_LISTEN":   ":9090",
			"SIGNER_STORE":        "postgres",
			"SIGNER_POSTGRES_DSN": "postgres://postgres:pw@postgres:5432/signer?sslmode=disable",
			// The container topology runs every replica as the database's
			// owner and lets them migrate; the role split is tested in
			// internal/store/postgres and on the kind cluster.
			"SIGNER_POSTGRES_MIGRATE":          "true",
			"SIGNER_LOCAL_KEK_FILE":            "/id/kek",
			"SIGNER_SVID_CERT_FILE":            "/id/signer.crt",
			"SIGNER_SVID_KEY_FILE":             "/id/signer.key",
			"SIGNER_TRUST_BUNDLE_FILE":         "/id/bundle.crt",
			"SIGNER_ALLOW_SPIFFE_IDS":          coreID + "," + offNetID,
			"SIGNER_BOOTSTRAP_SCOPES":          "payments",
			"SIGNER_MAX_CONNECTION_AGE":        "1m",
			"SIGNER_ROTATION_ALLOW_SPIFFE_IDS": operatorID,
			"SIGNER_CHECKPOINT_LOG":            "/anchor",
		}
		for k, v := range spec.env {
			env[k] = v
		}
		binds := spec.binds
		tp.signers = append(tp.signers, run(t, alias, spec.image,
			network.WithNetwork([]string{alias}, nw), mountID(tp.dir), testcontainers.WithEnv(env),
			testcontainers.WithExposedPorts("8443/tcp", "9090/tcp"),
			testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) { hc.Binds = append(hc.Binds, binds...) }),
			testcontainers.WithWaitStrategy(wait.ForLog("signer serving").WithStartupTimeout(60*time.Second))))
	}
	return tp
}

// pod is a pause container holding the network namespace (attached to the
// signer network when onNet), a sidecar with identity (the name of its SVID
// files) and the example core, both joining it. The core signs count times,
// every interval, carrying on after failures; with finish, pod returns once
// the core has exited.
type pod struct {
	pause, sidecar, core *testcontainers.DockerContainer
}

func (tp *topology) pod(t *testing.T, name, identity string, onNet bool, count int, every time.Duration, finish bool) pod {
	t.Helper()
	var upstream []string
	for i := range tp.signers {
		upstream = append(upstream, fmt.Sprintf("signer-%d:8443", i+1))
	}
	var p pod
	pauseOpts := []testcontainers.ContainerCustomizer{}
	if onNet {
		pauseOpts = append(pauseOpts, network.WithNetwork([]string{name}, tp.net))
	}
	p.pause = run(t, name+"-pause", pauseImage, pauseOpts...)
	p.sidecar = run(t, name+"-sidecar", sidecarImage, mountID(tp.dir), inPod(p.pause),
		testcontainers.WithEnv(map[string]string{
			"SIDECAR_LISTEN":            "127.0.0.1:7000",
			"SIDECAR_UPSTREAM":          strings.Join(upstream, ","),
			"SIDECAR_SIGNER_SPIFFE_ID":  signerID,
			"SIDECAR_SVID_CERT_FILE":    "/id/" + identity + ".crt",
			"SIDECAR_SVID_KEY_FILE":     "/id/" + identity + ".key",
			"SIDECAR_TRUST_BUNDLE_FILE": "/id/bundle.crt",
			"SIDECAR_IDENTITY_RELOAD":   "1s",
		}),
		testcontainers.WithWaitStrategy(wait.ForLog("sidecar listening").WithStartupTimeout(30*time.Second)))
	coreOpts := []testcontainers.ContainerCustomizer{inPod(p.pause),
		testcontainers.WithCmd("--signer", "127.0.0.1:7000", "--scope", "payments", "--every", every.String(),
			"--count", fmt.Sprint(count), "--keep-going", "--wait", "0", "--message", name)}
	if finish {
		coreOpts = append(coreOpts, testcontainers.WithWaitStrategy(wait.ForExit().WithExitTimeout(3*time.Minute)))
	}
	p.core = run(t, name+"-core", coreImage, coreOpts...)
	return p
}

// waitLog waits until the container's log contains s.
func waitLog(t *testing.T, c *testcontainers.DockerContainer, s string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(logs(t, c), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged within %v", s, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitExit waits until the container has exited.
func waitExit(t *testing.T, c *testcontainers.DockerContainer, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := c.State(context.Background())
		if err == nil && !st.Running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container still running after %v", within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// coreResult parses the example core's output.
type coreResult struct {
	signatures []string // hex SHA-256 of each returned signature
	failures   map[string]int
	fatal      string
}

func parseCore(out string) coreResult {
	r := coreResult{failures: map[string]int{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "signed and verified:"):
			i := strings.LastIndex(line, "signature=")
			sig, err := base64.RawStdEncoding.DecodeString(line[i+len("signature="):])
			if err == nil {
				h := sha256.Sum256(sig)
				r.signatures = append(r.signatures, hex.EncodeToString(h[:]))
			}
		case strings.HasPrefix(line, "failed: "):
			code, _, _ := strings.Cut(strings.TrimPrefix(line, "failed: "), ":")
			r.failures[code]++
		case strings.HasPrefix(line, "core: "):
			r.fatal = line
		}
	}
	return r
}

// validFor issues an SVID valid from a minute ago for d.
func validFor(d time.Duration) devpki.Option {
	return devpki.Validity(time.Now().Add(-time.Minute), time.Now().Add(d))
}
