package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

func (a *app) resultsCmd() *cobra.Command {
	var batchID, out, errOut string
	cmd := &cobra.Command{
		Use:   "results --batch ID [-o out.jsonl] [--errors errors.jsonl]",
		Short: "Export a batch's results as OpenAI Batch output JSONL (failed jobs to --errors)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if batchID == "" {
				return fmt.Errorf("--batch is required: the id `llmq enqueue` printed")
			}
			if err := distinctOutputs(out, errOut); err != nil {
				return err
			}
			ctx := cmd.Context()
			rdb, _, err := a.redisClient(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			store := results.NewStore(rdb, a.cfg.Prefix, a.cfg.Results.TTL)
			st, err := store.Batch(ctx, batchID)
			if err != nil {
				return err
			}
			okW, closeOK, err := createOutput(out, a.stdout)
			if err != nil {
				return err
			}
			errW, closeErr := okW, func() error { return nil }
			if errOut != "" && !(isStdout(errOut) && isStdout(out)) {
				if err := distinctOutputs(out, errOut); err != nil { // -o now exists: a link to it shows
					closeOK()
					return err
				}
				if errW, closeErr, err = createOutput(errOut, a.stdout); err != nil {
					return err
				}
			}
			var sum summary
			err = store.Export(ctx, batchID, func(id string, r *jobs.Result) error {
				if r == nil {
					sum.pending++
					return nil
				}
				sum.add(r)
				w := okW
				if r.Status != jobs.StatusSucceeded {
					w = errW
				}
				b, err := json.Marshal(r.OutputLine())
				if err != nil {
					return err
				}
				_, err = w.Write(append(b, '\n'))
				return err
			})
			if cerr := closeOK(); err == nil {
				err = cerr
			}
			if cerr := closeErr(); err == nil && errOut != "" {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("export batch %s: %w", batchID, err)
			}
			fmt.Fprintf(a.stderr, "batch %s: %d done, %d failed, %d pending of %d; tokens %d (prompt %d, completion %d)\n",
				batchID, sum.done, sum.failed, sum.pending, st.Total, sum.prompt+sum.completion, sum.prompt, sum.completion)
			return nil
		},
	}
	cmd.Flags().StringVar(&batchID, "batch", "", "batch id (required)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "output file for results (default stdout)")
	cmd.Flags().StringVar(&errOut, "errors", "", "output file for failed jobs (default: with the results)")
	return cmd
}

// summary counts an export.
type summary struct {
	done, failed, pending int
	prompt, completion    int
}

func (s *summary) add(r *jobs.Result) {
	if r.Status == jobs.StatusSucceeded {
		s.done++
	} else {
		s.failed++
	}
	if r.Usage != nil {
		s.prompt += r.Usage.PromptTokens
		s.completion += r.Usage.CompletionTokens
	}
}

func isStdout(path string) bool { return path == "" || path == "-" }

// errSameOutput is returned when -o and --errors name one file.
var errSameOutput = errors.New("-o and --errors name the same file: both would write to it at once and corrupt it; give --errors another file, or leave it out to get failed jobs with the results")

// distinctOutputs refuses -o and --errors naming one file: the same path,
// or two paths to one inode (a symlink, a hard link). Paths that do not
// exist yet are compared once -o has been created.
func distinctOutputs(out, errOut string) error {
	if errOut == "" || isStdout(out) || isStdout(errOut) {
		return nil
	}
	if filepath.Clean(out) == filepath.Clean(errOut) {
		return errSameOutput
	}
	a, err1 := os.Stat(out)
	b, err2 := os.Stat(errOut)
	if err1 == nil && err2 == nil && os.SameFile(a, b) {
		return errSameOutput
	}
	return nil
}

// createOutput opens path for writing (buffered), or returns def for "".
func createOutput(path string, def io.Writer) (io.Writer, func() error, error) {
	if path == "" || path == "-" {
		bw := bufio.NewWriter(def)
		return bw, bw.Flush, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", path, err)
	}
	bw := bufio.NewWriter(f)
	return bw, func() error {
		if err := bw.Flush(); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}, nil
}
