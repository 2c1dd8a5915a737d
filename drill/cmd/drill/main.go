// Command drill runs llmq's fault drills against real processes — the
// built llmq binary as workers, a Redis server per drill, the fake
// upstream — and prints the drill table. `make drill` runs it with the
// long form.
//
//	go run ./drill/cmd/drill -bin bin/llmq -size long
//	go run ./drill/cmd/drill -size short -run 'kill9|chaos'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/llmq/llmq/drill"
)

func main() {
	bin := flag.String("bin", "bin/llmq", "the llmq binary the workers run")
	size := flag.String("size", "long", "long (full counts) or short (CI counts)")
	only := flag.String("run", "", "run only drills whose name matches this regexp (kill9, redis-always, redis-everysec, sigterm, poison, chaos, load, secrets, outage)")
	dir := flag.String("dir", "", "scratch directory for Redis data, configs and worker logs (default: a new temporary one, removed when every drill passed)")
	seed := flag.Uint64("seed", 0, "seed of the drills' random choices (0: random; each report names its seed)")
	flag.Parse()
	if err := run(*bin, *size, *only, *dir, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "drill:", err)
		os.Exit(1)
	}
}

func run(bin, size, only, dir string, seed uint64) error {
	o := drill.Options{Bin: bin, Dir: dir, Progress: os.Stderr, Seed: seed}
	switch size {
	case "long":
		o.Size = drill.Long
	case "short":
		o.Size = drill.Short
	default:
		return fmt.Errorf("-size: want long or short, got %q", size)
	}
	re, err := regexp.Compile(only)
	if err != nil {
		return fmt.Errorf("-run: %w", err)
	}
	keep := dir != ""
	if !keep {
		if o.Dir, err = os.MkdirTemp("", "llmq-drill-"); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var reports []*drill.Report
	failed := 0
	for _, d := range drill.All() {
		if !re.MatchString(d.Name) {
			continue
		}
		start := time.Now()
		fmt.Fprintf(os.Stderr, "== drill %s (%s form)\n", d.Name, o.Size)
		dctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
		rep, err := d.Run(dctx, o)
		cancel()
		if err != nil {
			rep.Failures = append(rep.Failures, "could not run: "+err.Error())
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("wall time %.1f s", time.Since(start).Seconds()))
		if !rep.Passed() {
			failed++
		}
		reports = append(reports, rep)
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Println()
	if err := drill.WriteTable(os.Stdout, reports); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d drills failed; scratch data (Redis, configs, worker logs) kept in %s", failed, len(reports), o.Dir)
	}
	if !keep {
		_ = os.RemoveAll(o.Dir)
	}
	return nil
}
