package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
)

// Witnesses push checkpoints to the witnesses of a policy over C2SP
// tlog-witness (POST <url>/add-checkpoint: the size the witness last
// cosigned, a consistency proof from it, the checkpoint) and collect their
// cosignatures. A witness remembers the largest checkpoint it cosigned for
// the log and cosigns nothing inconsistent with it: it is the memory of the
// log's history that the store's owner cannot rewrite.
type Witnesses struct {
	policy  *auditlog.WitnessPolicy
	client  *http.Client
	observe func(witness, outcome string)

	mu    sync.Mutex
	sizes map[string]uint64 // witness name → the size it last told us it holds
}

// NewWitnesses pushes to policy's witnesses; each request is bounded by
// timeout. observe, if not nil, is told each push's outcome per witness:
// cosigned, conflict, fork or error.
func NewWitnesses(policy *auditlog.WitnessPolicy, timeout time.Duration, observe func(witness, outcome string)) *Witnesses {
	if observe == nil {
		observe = func(string, string) {}
	}
	return &Witnesses{policy: policy, client: &http.Client{Timeout: timeout}, observe: observe, sizes: map[string]uint64{}}
}

// Policy is the witness policy.
func (w *Witnesses) Policy() *auditlog.WitnessPolicy { return w.policy }

// witnessResult is one witness's answer to a push.
type witnessResult struct {
	name string
	// cosigned: its cosignature lines were added to the note.
	cosigned bool
	// holds: the size it says it cosigned last, when it refused ours
	// because it holds a larger one (a store rolled back, or a replica
	// that pushed a newer checkpoint first).
	holds uint64
	// fork: it holds another tree at size forkAt than the one our proof
	// leads from: the store's history is not what it cosigned.
	fork   bool
	forkAt uint64
	err    error // it could not be asked, or answered something else
}

// prover returns the consistency proof from old to the pushed size.
type prover func(ctx context.Context, old uint64) ([][]byte, error)

// push sends cp to every witness of the policy not yet in skip (those whose
// cosignature the note already has), concurrently, and returns cp's note
// with the cosignatures it got.
func (w *Witnesses) push(ctx context.Context, cp auditlog.Checkpoint, prove prover, skip map[string]bool) ([]byte, []witnessResult) {
	ws := w.policy.Witnesses()
	results := make([]witnessResult, len(ws))
	lines := make([][]byte, len(ws))
	var wg sync.WaitGroup
	for i, wit := range ws {
		if skip[wit.Name] {
			results[i] = witnessResult{name: wit.Name, cosigned: true}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lines[i], results[i] = w.pushOne(ctx, wit, cp, prove)
		}()
	}
	wg.Wait()
	note := cp.Note
	for i, l := range lines {
		if l == nil {
			continue
		}
		var added []string
		note, added = w.policy.Cosign(note, l)
		if len(added) == 0 {
			results[i].cosigned, results[i].err = false, fmt.Errorf("its answer holds no cosignature that verifies with its key in the witness policy")
		}
	}
	for i, r := range results {
		if skip[ws[i].Name] {
			continue
		}
		switch {
		case r.cosigned:
			w.observe(r.name, "cosigned")
		case r.fork:
			w.observe(r.name, "fork")
		case r.holds > 0:
			w.observe(r.name, "conflict")
		default:
			w.observe(r.name, "error")
		}
	}
	return note, results
}

// pushOne asks one witness, starting from the size it last told us, and
// follows its 409 to the size it holds (at most a few times: replicas may
// race). It returns the cosignature lines it answered with.
func (w *Witnesses) pushOne(ctx context.Context, wit auditlog.Witness, cp auditlog.Checkpoint, prove prover) ([]byte, witnessResult) {
	r := witnessResult{name: wit.Name}
	w.mu.Lock()
	old := min(w.sizes[wit.Name], cp.Size)
	w.mu.Unlock()
	for attempt := 0; attempt < 3; attempt++ {
		var proof [][]byte
		if old > 0 && old < cp.Size {
			var err error
			if proof, err = prove(ctx, old); err != nil {
				r.err = fmt.Errorf("consistency proof from size %d: %w", old, err)
				return nil, r
			}
		}
		status, ctype, body, err := w.post(ctx, wit.URL, old, proof, cp.Note)
		if err != nil {
			r.err = err
			return nil, r
		}
		switch {
		case status == http.StatusOK:
			w.setSize(wit.Name, cp.Size)
			r.cosigned = true
			return body, r
		case status == http.StatusConflict && strings.HasPrefix(ctype, "text/x.tlog.size"):
			held, err := strconv.ParseUint(strings.TrimSpace(string(body)), 10, 64)
			if err != nil {
				r.err = fmt.Errorf("409 with a size that does not parse: %q", body)
				return nil, r
			}
			w.setSize(wit.Name, held)
			switch {
			case held > cp.Size:
				r.holds = held
				return nil, r
			case held == old:
				// The size we sent was its own: it refuses the root
				// (tlog-witness: same size, another root).
				r.fork, r.forkAt = true, old
				return nil, r
			}
			old = held
		case status == http.StatusUnprocessableEntity:
			// The consistency proof from the size it holds does not lead
			// to our checkpoint: it cosigned another tree at that size.
			r.fork, r.forkAt = true, old
			return nil, r
		default:
			r.err = fmt.Errorf("answered %d %s%s", status, http.StatusText(status), hint(status, cp.Origin))
			return nil, r
		}
	}
	r.err = errors.New("its size kept moving (another replica pushing at the same time); trying again at the next check")
	return nil, r
}

// hint says what an answer usually means (tlog-witness's 404 and 403; the
// omniwitness the tests run answers 500 for both).
func hint(status int, origin string) string {
	switch status {
	case http.StatusNotFound, http.StatusForbidden, http.StatusInternalServerError:
		return fmt.Sprintf(": does it list the log %q with this signer's verifier key?", origin)
	}
	return ""
}

func (w *Witnesses) setSize(name string, size uint64) {
	w.mu.Lock()
	w.sizes[name] = size
	w.mu.Unlock()
}

// post sends one add-checkpoint request.
func (w *Witnesses) post(ctx context.Context, url string, old uint64, proof [][]byte, note []byte) (int, string, []byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		fmt.Fprintf(&b, "%s\n", base64.StdEncoding.EncodeToString(h))
	}
	b.WriteByte('\n')
	b.Write(note)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &b)
	if err != nil {
		return 0, "", nil, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, "", nil, err
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), body, nil
}
