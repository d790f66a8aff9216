// Package nomaterial proves that a binary cannot hold an Ed25519 private key:
// no first-party package in its import graph names ed25519.PrivateKey (under
// any import name, through any alias), has a value of that type, or calls
// ed25519.GenerateKey or ed25519.NewKeyFromSeed.
//
// The check is type-aware (go/types), so it sees what a text search cannot:
// a renamed import (`import edkey "crypto/ed25519"`), a type alias declared in
// another package, golang.org/x/crypto/ed25519's aliases, or a function value
// taken from GenerateKey. Run it with cmd/nomaterial on any module's main
// package, e.g. the core repository's ./cmd/plexsphere.
package nomaterial

import (
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"sort"
	"strings"

	"golang.org/x/tools/go/packages"
)

// Finding is one violation.
type Finding struct {
	Pos     token.Position
	Package string
	What    string
}

func (f Finding) String() string { return fmt.Sprintf("%s: %s (package %s)", f.Pos, f.What, f.Package) }

const ed25519Path = "crypto/ed25519"

// forbiddenFuncs mint private keys.
var forbiddenFuncs = map[string]bool{"GenerateKey": true, "NewKeyFromSeed": true}

// isPrivateKey reports whether t is ed25519.PrivateKey, seen through aliases
// and pointers.
func isPrivateKey(t types.Type) bool {
	for {
		t = types.Unalias(t)
		p, ok := t.(*types.Pointer)
		if !ok {
			break
		}
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == ed25519Path && n.Obj().Name() == "PrivateKey"
}

// Check inspects one type-checked package's files.
func Check(fset *token.FileSet, pkgPath string, files []*ast.File, info *types.Info) []Finding {
	var out []Finding
	seen := map[token.Pos]bool{}
	add := func(pos token.Pos, what string) {
		if seen[pos] {
			return
		}
		seen[pos] = true
		out = append(out, Finding{Pos: fset.Position(pos), Package: pkgPath, What: what})
	}
	for id, obj := range info.Uses {
		if obj == nil || obj.Pkg() == nil || obj.Pkg().Path() != ed25519Path {
			continue
		}
		switch {
		case obj.Name() == "PrivateKey":
			add(id.Pos(), "names ed25519.PrivateKey")
		case forbiddenFuncs[obj.Name()]:
			add(id.Pos(), "uses ed25519."+obj.Name()+", which makes a private key")
		}
	}
	// Values of the type, however it was spelt or obtained (an alias from a
	// package outside this module, a function returning one).
	for expr, tv := range info.Types {
		if tv.Type != nil && isPrivateKey(tv.Type) {
			add(expr.Pos(), "holds a value of type ed25519.PrivateKey")
		}
	}
	for id, obj := range info.Defs {
		if obj != nil && obj.Type() != nil && isPrivateKey(obj.Type()) {
			add(id.Pos(), "declares "+id.Name+" of type ed25519.PrivateKey")
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pos.Filename != out[j].Pos.Filename {
			return out[i].Pos.Filename < out[j].Pos.Filename
		}
		return out[i].Pos.Offset < out[j].Pos.Offset
	})
	return out
}

// Scan walks the import graph of patterns (relative to dir) and checks every
// non-test file of every package that belongs to the roots' module. It
// returns the findings and the packages it checked.
func Scan(dir string, patterns ...string) ([]Finding, []string, error) {
	// First the graph alone (go list: cheap), to find our packages...
	graph := &packages.Config{Mode: packages.NeedName | packages.NeedImports | packages.NeedDeps | packages.NeedModule, Dir: dir}
	roots, err := packages.Load(graph, patterns...)
	if err != nil {
		return nil, nil, err
	}
	if len(roots) == 0 {
		return nil, nil, fmt.Errorf("nomaterial: %v matched no packages", patterns)
	}
	modules := map[string]bool{}
	for _, r := range roots {
		if len(r.Errors) > 0 {
			return nil, nil, fmt.Errorf("nomaterial: %s: %v", r.PkgPath, r.Errors[0])
		}
		if r.Module == nil {
			return nil, nil, fmt.Errorf("nomaterial: %s is not in a module", r.PkgPath)
		}
		modules[r.Module.Path] = true
	}
	var ours []string
	packages.Visit(roots, nil, func(p *packages.Package) {
		// The standard library and third-party modules are not ours to vet.
		if p.Module != nil && modules[p.Module.Path] {
			ours = append(ours, p.PkgPath)
		}
	})
	sort.Strings(ours)
	// ...then type-check only those from source; their imports come from
	// compiler export data.
	typed := &packages.Config{
		Mode: packages.NeedName | packages.NeedFiles | packages.NeedSyntax | packages.NeedTypes | packages.NeedTypesInfo,
		Dir:  dir,
	}
	pkgs, err := packages.Load(typed, ours...)
	if err != nil {
		return nil, nil, err
	}
	var findings []Finding
	for _, p := range pkgs {
		if len(p.Errors) > 0 {
			return nil, nil, fmt.Errorf("nomaterial: %s: %v", p.PkgPath, p.Errors[0])
		}
		var files []*ast.File
		for _, f := range p.Syntax {
			if !strings.HasSuffix(p.Fset.Position(f.Pos()).Filename, "_test.go") {
				files = append(files, f)
			}
		}
		findings = append(findings, Check(p.Fset, p.PkgPath, files, p.TypesInfo)...)
	}
	return findings, ours, nil
}

// Linked is one forbidden package in a root's import graph, with the chain
// of imports that brings it in.
type Linked struct {
	Root, Package string
	Via           []string
}

func (l Linked) String() string {
	return fmt.Sprintf("%s links %s (via %s)", l.Root, l.Package, strings.Join(l.Via, " → "))
}

// Imports reports every package of patterns' import graphs (relative to
// dir) whose path is one of forbidden or under one of them: the check that
// a core-side binary links no server-side code (no store, no key provider,
// no audit writer), so it could not reach keys even through a bug.
func Imports(dir string, forbidden []string, patterns ...string) ([]Linked, error) {
	cfg := &packages.Config{Mode: packages.NeedName | packages.NeedImports | packages.NeedDeps, Dir: dir}
	roots, err := packages.Load(cfg, patterns...)
	if err != nil {
		return nil, err
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("nomaterial: %v matched no packages", patterns)
	}
	banned := func(path string) bool {
		for _, f := range forbidden {
			if path == f || strings.HasPrefix(path, f+"/") {
				return true
			}
		}
		return false
	}
	var out []Linked
	for _, r := range roots {
		if len(r.Errors) > 0 {
			return nil, fmt.Errorf("nomaterial: %s: %v", r.PkgPath, r.Errors[0])
		}
		// Breadth first, so each finding carries a shortest import chain.
		via := map[string][]string{r.PkgPath: {r.PkgPath}}
		queue := []*packages.Package{r}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if banned(p.PkgPath) {
				out = append(out, Linked{Root: r.PkgPath, Package: p.PkgPath, Via: via[p.PkgPath]})
				continue
			}
			paths := make([]string, 0, len(p.Imports))
			for path := range p.Imports {
				paths = append(paths, path)
			}
			sort.Strings(paths)
			for _, path := range paths {
				if _, seen := via[path]; seen {
					continue
				}
				via[path] = append(append([]string{}, via[p.PkgPath]...), path)
				queue = append(queue, p.Imports[path])
			}
		}
	}
	return out, nil
}
