package worker_test

import (
	"bufio"
	"bytes"
	"errors"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestNoTwoFilesCallEachOther keeps the package's files layered: when a
// file calls a function or method another file declares, that file calls
// none of the first's back (handler.go reads the run, finish.go carries
// out its verdict, outcome.go is the vocabulary both use; no file is half
// of another). It type-checks the package from the build cache's export
// data, so calls are resolved, not matched by name.
func TestNoTwoFilesCallEachOther(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	exports := exportData(t)
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	conf := types.Config{Importer: importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		file, ok := exports[path]
		if !ok {
			return nil, os.ErrNotExist
		}
		return os.Open(file)
	})}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}}
	pkg, err := conf.Check("github.com/llmq/llmq/worker", fset, files, info)
	if err != nil {
		t.Fatal(err)
	}

	// calls[a][b]: the functions of file b that file a uses.
	calls := map[string]map[string][]string{}
	for id, obj := range info.Uses {
		fn, ok := obj.(*types.Func)
		if !ok || fn.Pkg() != pkg {
			continue
		}
		from, to := fset.File(id.Pos()).Name(), fset.File(fn.Pos()).Name()
		if from == to {
			continue
		}
		if calls[from] == nil {
			calls[from] = map[string][]string{}
		}
		if !slices.Contains(calls[from][to], fn.Name()) {
			calls[from][to] = append(calls[from][to], fn.Name())
		}
	}
	for a, tos := range calls {
		for b, fns := range tos {
			if back := calls[b][a]; a < b && len(back) > 0 {
				slices.Sort(fns)
				slices.Sort(back)
				t.Errorf("%s and %s call each other: %s uses %v of %s, which uses %v", a, b, a, fns, b, back)
			}
		}
	}
	if len(calls) < 5 {
		t.Fatalf("found calls between %d files only: the check is not reading the package", len(calls))
	}
}

// exportData maps the import path of every package worker depends on to
// its export data in the build cache (go list -export).
func exportData(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-export", "-deps", "-f", "{{.ImportPath}}\t{{.Export}}", ".").Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -export: %v\n%s", err, stderr)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if path, file, ok := strings.Cut(sc.Text(), "\t"); ok && file != "" {
			m[path] = file
		}
	}
	return m
}
