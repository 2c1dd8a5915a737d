package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
)

// benchModel is the model of every job.
const benchModel = "gpt-4o-mini"

// batch is the benchmark's jobs, as JSONL, with what the fake charges them.
type batch struct {
	jobs                 []string // short-form JSONL lines
	sumCost, maxCost     int64
	minPrompt, maxPrompt int
	minMax, maxMax       int
}

// newBatch returns n jobs with a fixed mix (for seed): 70% short prompts
// (10–80 words), 25% medium (100–400), 5% long (600–1000), with max_tokens
// drawn from 16 to 1024; small, only short prompts with max_tokens 16–64.
// Costs are counted with m, the way the provider charges.
func newBatch(n int, seed uint64, small bool, m jobs.Method) *batch {
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	est := jobs.NewEstimator(fakeupstream.DefaultCompletion, jobs.WithMethod(m))
	maxTokens := []int{16, 32, 64, 128, 256, 256, 512, 1024}
	if small {
		maxTokens = []int{16, 32, 64}
	}
	// Ordinary, varied words, so prompts tokenize like text.
	vocabulary := strings.Fields(`the queue worker budget request token minute fleet provider answer
		summarise translate explain customer order invoice shipped refund weather Paris Tokyo
		because however therefore 2024 3.14 JSON field value error retry limit`)
	b := &batch{minPrompt: 1 << 30, minMax: 1 << 30}
	for i := range n {
		var words int
		switch p := rnd.IntN(100); {
		case p < 70 || small:
			words = 10 + rnd.IntN(71)
		case p < 95:
			words = 100 + rnd.IntN(301)
		default:
			words = 600 + rnd.IntN(401)
		}
		var content strings.Builder
		fmt.Fprintf(&content, "Job %d.", i)
		for range words {
			content.WriteString(" ")
			content.WriteString(vocabulary[rnd.IntN(len(vocabulary))])
		}
		mt := maxTokens[rnd.IntN(len(maxTokens))]
		line, _ := json.Marshal(map[string]any{
			"custom_id": fmt.Sprintf("j%04d", i), "model": benchModel, "max_tokens": mt,
			"messages": []map[string]string{{"role": "user", "content": content.String()}},
		})
		var req jobs.Request
		_ = json.Unmarshal(line, &req)
		c := est.Estimate(&req)
		b.jobs = append(b.jobs, string(line))
		b.sumCost += int64(c.Total())
		b.maxCost = max(b.maxCost, int64(c.Total()))
		b.minPrompt, b.maxPrompt = min(b.minPrompt, c.PromptTokens), max(b.maxPrompt, c.PromptTokens)
		b.minMax, b.maxMax = min(b.minMax, mt), max(b.maxMax, mt)
	}
	return b
}

// jsonl returns the batch as one JSONL document.
func (b *batch) jsonl() string { return strings.Join(b.jobs, "\n") + "\n" }
