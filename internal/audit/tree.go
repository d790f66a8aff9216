package audit

import (
	"context"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
)

// The audit entries are the leaves of an RFC 6962 Merkle tree: leaf i is the
// entry with Seq i+1. A store keeps the leaves and the tree's nodes from
// StoredLevel up (one hash per 16 leaves, about 4 bytes per entry); a node
// below that level is recomputed from at most 2^(StoredLevel-1) leaves when a
// proof needs it. The tree code is transparency-dev/merkle's; this file only
// connects it to a store.

// StoredLevel is the lowest tree level whose nodes a store keeps.
const StoredLevel = 4

// TileSize is the number of leaves under one stored node of the lowest
// stored level. Pruning keeps whole tiles.
const TileSize = 1 << StoredLevel

var hasher = rfc6962.DefaultHasher

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// Node is a stored tree node.
type Node struct {
	Level uint8
	Index uint64
	Hash  []byte
}

// NodeID names a node: its level and its index within the level.
type NodeID = compact.NodeID

// Tree is the right edge of a log (a compact range from leaf 0): enough to
// append leaves and compute the root, not to prove anything. A Tree without
// a range counts leaves only (a benchmark build's WithoutTree).
type Tree struct {
	r *compact.Range
	n uint64 // the size, when r is nil
}

// NewTree is the empty log.
func NewTree() *Tree { return &Tree{r: rangeFactory.NewEmptyRange(0)} }

// Size is the number of leaves.
func (t *Tree) Size() uint64 {
	if t.r == nil {
		return t.n
	}
	return t.r.End()
}

// Append adds a leaf by its leaf hash; keep is called with every node at or
// above StoredLevel that the leaf completes (the nodes a store keeps).
func (t *Tree) Append(leafHash []byte, keep func(Node)) {
	if t.r == nil {
		t.n++
		return
	}
	var visit compact.VisitFn
	if keep != nil {
		visit = func(id compact.NodeID, h []byte) {
			if id.Level >= StoredLevel {
				keep(Node{Level: uint8(id.Level), Index: id.Index, Hash: h})
			}
		}
	}
	if err := t.r.Append(leafHash, visit); err != nil {
		panic("audit: compact range append: " + err.Error()) // only on a malformed range, which Tree never builds
	}
}

// Root is the tree's root hash (RFC 6962: SHA-256 of the empty string for
// the empty tree).
func (t *Tree) Root() []byte {
	if t.r == nil {
		return nil
	}
	if t.Size() == 0 {
		return hasher.EmptyRoot()
	}
	h, err := t.r.GetRootHash(nil)
	if err != nil {
		panic("audit: compact range root: " + err.Error())
	}
	return h
}

// Clone returns an independent copy.
func (t *Tree) Clone() *Tree {
	if t.r == nil {
		return &Tree{n: t.n}
	}
	hs := make([][]byte, len(t.r.Hashes()))
	copy(hs, t.r.Hashes())
	r, err := rangeFactory.NewRange(0, t.r.End(), hs)
	if err != nil {
		panic("audit: clone range: " + err.Error())
	}
	return &Tree{r: r}
}

// Reader is what proofs and tree restores read from a store.
type Reader interface {
	// Nodes returns the stored hashes of ids, each at or above StoredLevel,
	// in order; a missing node is an error.
	Nodes(ctx context.Context, ids []NodeID) ([][]byte, error)
	// Leaves returns the leaves with indexes [from, to) (seqs from+1..to), in
	// order; a missing (or pruned) leaf is an error wrapping ErrPruned or
	// ErrTreeBroken.
	Leaves(ctx context.Context, from, to uint64) ([][]byte, error)
}

var (
	// ErrPruned: the leaves a request needs were exported and pruned.
	ErrPruned = errors.New("audit: entries pruned from the store")
	// ErrTreeBroken: the stored tree is missing a node or a leaf it must
	// have, or does not match a signed checkpoint. It is the log broken.
	ErrTreeBroken = fmt.Errorf("audit: stored tree is broken: %w", signerr.ErrAuditLogBroken)
)

// hashes resolves node ids to hashes: stored nodes are read, nodes below
// StoredLevel are recomputed from their leaves.
func hashes(ctx context.Context, r Reader, ids []NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	var stored []NodeID
	var at []int
	for i, id := range ids {
		if id.Level >= StoredLevel {
			stored = append(stored, id)
			at = append(at, i)
			continue
		}
		begin, end := id.Coverage()
		leaves, err := r.Leaves(ctx, begin, end)
		if err != nil {
			return nil, err
		}
		sub := rangeFactory.NewEmptyRange(begin)
		for _, l := range leaves {
			h := auditlog.LeafHash(l)
			if err := sub.Append(h[:], nil); err != nil {
				return nil, err
			}
		}
		if got := sub.Hashes(); len(got) != 1 {
			return nil, fmt.Errorf("%w: node %d/%d from %d leaves", ErrTreeBroken, id.Level, id.Index, len(leaves))
		} else {
			out[i] = got[0]
		}
	}
	if len(stored) > 0 {
		hs, err := r.Nodes(ctx, stored)
		if err != nil {
			return nil, err
		}
		if len(hs) != len(stored) {
			return nil, fmt.Errorf("%w: %d of %d nodes", ErrTreeBroken, len(hs), len(stored))
		}
		for j, i := range at {
			out[i] = hs[j]
		}
	}
	return out, nil
}

// TreeAt rebuilds the right edge of the log's first size leaves from the
// store: stored nodes for whole tiles, leaves for the last partial one.
func TreeAt(ctx context.Context, r Reader, size uint64) (*Tree, error) {
	ids := compact.RangeNodes(0, size, nil)
	hs, err := hashes(ctx, r, ids)
	if err != nil {
		return nil, err
	}
	cr, err := rangeFactory.NewRange(0, size, hs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTreeBroken, err)
	}
	return &Tree{r: cr}, nil
}

// InclusionProof proves leaf index is in the tree of the given size.
func InclusionProof(ctx context.Context, r Reader, index, size uint64) ([][]byte, error) {
	n, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return rehash(ctx, r, n)
}

// ConsistencyProof proves the tree of size1 is a prefix of the tree of size2.
func ConsistencyProof(ctx context.Context, r Reader, size1, size2 uint64) ([][]byte, error) {
	n, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return rehash(ctx, r, n)
}

func rehash(ctx context.Context, r Reader, n proof.Nodes) ([][]byte, error) {
	hs, err := hashes(ctx, r, n.IDs)
	if err != nil {
		return nil, err
	}
	return n.Rehash(hs, hasher.HashChildren)
}

// VerifyInclusion checks an inclusion proof against a root.
func VerifyInclusion(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	return proof.VerifyInclusion(hasher, index, size, leafHash, p, root)
}

// VerifyConsistency checks a consistency proof between two roots.
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(hasher, size1, size2, p, root1, root2)
}

// EmptyRoot is the root of the empty log.
func EmptyRoot() []byte { return hasher.EmptyRoot() }
