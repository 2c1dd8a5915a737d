package producer_test

import (
	"bufio"
	"bytes"
	"go/version"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A service that imports producer must not be forced onto a newer Go than
// llmq's dependencies need: each module's `go` line is the highest `go` line
// of the modules it requires (what `go mod tidy` raises it to), and the
// toolchain llmq is built with goes on a `toolchain` line instead.
func TestGoDirectiveIsWhatTheDependenciesRequire(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	for name, dir := range map[string]string{"llmq": "..", "deploy": filepath.Join("..", "deploy")} {
		t.Run(name, func(t *testing.T) {
			own := goLine(t, filepath.Join(dir, "go.mod"))
			cmd := exec.Command(goBin, "list", "-mod=readonly", "-m", "-f", "{{if not .Main}}{{.Path}} {{.GoVersion}}{{end}}", "all")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOWORK=off")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list -m all in %s: %v\n%s", dir, err, exitStderr(err))
			}
			need, by := "go1.0", ""
			for line := range strings.Lines(string(out)) {
				path, v, ok := strings.Cut(strings.TrimSpace(line), " ")
				if !ok || v == "" || strings.HasPrefix(path, "github.com/llmq/llmq") {
					continue // no go line, or llmq itself (deploy's replace)
				}
				if version.Compare("go"+v, need) > 0 {
					need, by = "go"+v, path
				}
			}
			if version.Compare(own, need) != 0 {
				t.Fatalf("%s/go.mod says %s; its dependencies require %s (%s): set `go %s` (and `toolchain` for the build's Go)",
					dir, own, need, by, strings.TrimPrefix(need, "go"))
			}
		})
	}
}

// goLine returns the `go` directive of a go.mod file, as "go1.N.M".
func goLine(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "go "); ok {
			return "go" + strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no go directive", path)
	return ""
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
