package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// lockedBuffer collects a logger's lines across goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) records(t *testing.T, msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// The start-up sweep says when it starts and ends, with the entries and
// the time it took; every successful rotation step is one line with the
// operation, the scope, the keys and the operator.
func TestSweepAndRotationsAreLogged(t *testing.T) {
	var buf lockedBuffer
	env := signertest.Start(t, signertest.WithLogger(config.Logger(&buf, "info")))
	if len(buf.records(t, "audit log sweep started")) != 1 {
		t.Fatal("no sweep start line")
	}
	done := buf.records(t, "audit log sweep done")
	if len(done) != 1 || done[0]["entries"] == nil {
		t.Fatalf("sweep done lines: %v", done)
	}
	if _, ok := done[0]["took"].(string); !ok {
		t.Fatalf("took is not a duration string: %v", done[0]["took"])
	}

	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	r, err := op.Open(context.Background(), &signerv1.OpenRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	lines := buf.records(t, "rotation")
	if len(lines) != 1 {
		t.Fatalf("rotation lines: %v", lines)
	}
	l := lines[0]
	if l["operation"] != "open" || l["scope"] != signertest.Scope || l["key_pending"] != r.GetKey().GetKeyId() || l["operator"] != signertest.OperatorID {
		t.Fatalf("rotation line: %v", l)
	}
}
