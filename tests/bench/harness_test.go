package bench

import (
	"context"
	"crypto/sha256"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// The meters are only as good as their readings: these tests check them
// against an independent account.

// procCPU of this process agrees with getrusage (to a few clock ticks).
func TestProcCPUMatchesRusage(t *testing.T) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for range 300 { // ~0.1-0.5 s of CPU, so the tick-granular reading moves
		h.Write(buf)
	}
	self, err := selfCPU()
	if err != nil {
		t.Fatal(err)
	}
	proc, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if proc <= 0 {
		t.Fatalf("procCPU = %.0f µs after burning CPU", proc)
	}
	if d := self - proc; d < -3e4 || d > 3e4 {
		t.Fatalf("getrusage %.0f µs, /proc stat %.0f µs: more than 3 ticks apart", self, proc)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Fatal("procCPU of a pid that does not exist: no error")
	}
}

// boltUsed follows the pages bbolt allocates (its own stats) as a log
// grows, while the file grows in preallocated steps.
func TestBoltUsedTracksPages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var last float64
	for round := range 3 {
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("log"))
			if err != nil {
				return err
			}
			for i := range 2000 {
				k := []byte{byte(round), byte(i >> 8), byte(i)}
				if err := bk.Put(k, make([]byte, 200)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		used, err := boltUsed(path)
		if err != nil {
			t.Fatal(err)
		}
		var hwm int64
		db.View(func(tx *bolt.Tx) error { hwm = tx.Size(); return nil })
		if int64(used) != hwm {
			t.Fatalf("round %d: boltUsed %.0f, bbolt's high-water mark %d", round, used, hwm)
		}
		if used <= last || used-last < 2000*200 {
			t.Fatalf("round %d: boltUsed grew %.0f → %.0f for 400 kB of values", round, last, used)
		}
		last = used
	}
	if _, err := boltUsed(filepath.Join(t.TempDir(), "missing.db")); err == nil {
		t.Fatal("boltUsed of a missing file: no error")
	}
	junk := filepath.Join(t.TempDir(), "junk.db")
	if err := os.WriteFile(junk, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := boltUsed(junk); err == nil {
		t.Fatal("boltUsed of a file that is not bbolt: no error")
	}
}

// The relay floor checks the signer's SPIFFE ID like the sidecar: through a
// relay expecting the signer's ID, a server presenting another ID in the
// same trust domain gets no call; one presenting the signer's ID does.
func TestFloorRelayChecksSignerID(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the floor programs")
	}
	ca := signertest.NewCA(t)
	for _, tc := range []struct {
		name   string
		serves string
		ok     bool
	}{
		{"signer's ID", signertest.SignerID, true},
		{"another ID", "spiffe://example.org/ns/plexsphere/sa/impostor", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := writeSVID(t, ca, dir, "server", tc.serves)
			addr := freeAddr(t)
			startProc(t, "signer", binPath(t, "floorsigner"), nil,
				"--listen", addr, "--cert", files.Cert, "--key", files.Key, "--bundle", files.Bundle)
			sock, _ := startRelay(t, &signertest.Env{CA: ca, Addr: addr})
			c, err := client.Dial(context.Background(), "unix://"+sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			call := func(ctx context.Context) error { _, err := c.Sign(ctx, scope, payload); return err }
			// Both ends up before the call, so a refusal is the relay's check.
			for _, end := range [][2]string{{"tcp", addr}, {"unix", sock}} {
				if err := waitDial(end[0], end[1]); err != nil {
					t.Fatal(err)
				}
			}
			if tc.ok {
				if err := waitReady(call); err != nil {
					t.Fatalf("through the relay to the signer's ID: %v", err)
				}
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := call(ctx); err == nil {
				t.Fatal("the relay passed a call to a server presenting another SPIFFE ID")
			}
		})
	}
}

func waitDial(network, addr string) error {
	var err error
	for range 200 {
		var c net.Conn
		if c, err = net.Dial(network, addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return err
}
