package drill

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/hold"
)

// Secrets is drill 7: a batch run with a recognisable API key, including a
// 401 that puts the fleet on hold (lifted with `llmq resume`) and upstream
// errors that dead-letter jobs. Then the key — and the part of it OpenAI
// itself masks — is searched for in every worker log line, every CLI
// output (results export, dlq list/show, status, config, resume), every
// task asynq keeps (payload, result, last error), every key and value in
// Redis, and the workers' /metrics if they serve one: 0 hits.
func Secrets(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "7 secrets", Size: o.Size}
	n := o.Size.pick(40, 500)
	suffix := make([]byte, 8)
	_, _ = rand.Read(suffix)
	secret := "sk-drill-SECRET-4b1d" + hex.EncodeToString(suffix)
	needles := []string{secret, secret[3 : len(secret)-4]} // the whole key; what OpenAI's own masking hides
	e, err := newEnv(ctx, o, setup{name: "secrets", apiKey: secret, concurrency: 4,
		fake: fakeupstream.Config{APIKey: secret, Faults: "401"}})
	if err != nil {
		return rep, err
	}
	defer e.close()
	ws, err := e.startFleet(ctx, 2)
	if err != nil {
		return rep, err
	}
	const batch = "secrets"
	texts := map[string]string{} // source -> text searched
	out, errOut, err := e.cli(ctx, bytes.NewReader(batchJSONL(n)), "enqueue", "-", "--batch", batch)
	if err != nil {
		return rep, err
	}
	texts["llmq enqueue output"] = out + errOut

	holds := hold.NewStore(e.rdb, e.prefix)
	if err := waitUntil(ctx, 30*time.Second, func() (bool, error) {
		st, err := holds.Get(ctx, "default")
		return err == nil && st != nil, nil
	}); err != nil {
		return rep, fmt.Errorf("the injected 401 did not put the fleet on hold: %w", err)
	}
	dump, keys, err := dumpRedis(ctx, e.rdb)
	if err != nil {
		return rep, err
	}
	texts["Redis while on hold (every key and value)"] = dump
	if out, errOut, err = e.cli(ctx, nil, "status"); err != nil {
		return rep, err
	}
	texts["llmq status (on hold)"] = out + errOut
	rep.check(strings.Contains(out, "HOLD"), "llmq status does not show the hold: %s", clip(out, 200))
	if err := e.fake.SetFaults("400x3,500x2,429,400"); err != nil {
		return rep, err
	}
	if out, errOut, err = e.cli(ctx, nil, "resume"); err != nil {
		return rep, err
	}
	texts["llmq resume"] = out + errOut

	t, _, err := e.settle(ctx, rep, batch, n, time.Duration(o.Size.pick(60, 180))*time.Second)
	if err != nil {
		return rep, err
	}
	st := e.fake.Stats()
	rep.check(st.ByStatus["200"] > 0, "the upstream accepted no request: the key did not travel")
	rep.check(t.failed > 0, "no job was dead-lettered: the error paths were not exercised")

	// Everything llmq wrote or shows.
	for _, w := range ws {
		b, _ := os.ReadFile(w.LogPath)
		texts[fmt.Sprintf("worker %d log", w.N)] = string(b)
	}
	resOut, errFile := filepath.Join(e.dir, "results.jsonl"), filepath.Join(e.dir, "errors.jsonl")
	if out, errOut, err = e.cli(ctx, nil, "results", "--batch", batch, "-o", resOut, "--errors", errFile); err != nil {
		return rep, err
	}
	texts["llmq results output"] = out + errOut
	for _, f := range []string{resOut, errFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return rep, err
		}
		texts["export "+filepath.Base(f)] = string(b)
	}
	for _, args := range [][]string{{"dlq", "list"}, {"config"}} {
		out, errOut, err := e.cli(ctx, nil, args...)
		if err != nil {
			return rep, err
		}
		texts["llmq "+strings.Join(args, " ")] = out + errOut
	}
	archived, err := e.insp.ListArchivedTasks(e.queue, asynq.PageSize(1000))
	if err != nil {
		return rep, err
	}
	completed, err := e.insp.ListCompletedTasks(e.queue, asynq.PageSize(1000))
	if err != nil {
		return rep, err
	}
	var tasks strings.Builder
	for _, ti := range append(archived, completed...) {
		fmt.Fprintf(&tasks, "%s %s %s %s\n", ti.ID, ti.Payload, ti.Result, ti.LastErr)
	}
	texts["asynq tasks (archived+completed: payload, result, last error)"] = tasks.String()
	if len(archived) > 0 {
		out, errOut, err := e.cli(ctx, nil, "dlq", "show", archived[0].ID)
		if err != nil {
			return rep, err
		}
		texts["llmq dlq show"] = out + errOut
	}
	dump, keys2, err := dumpRedis(ctx, e.rdb)
	if err != nil {
		return rep, err
	}
	texts["Redis after the batch (every key and value)"] = dump
	metrics := 0
	for _, w := range ws {
		if body, err := getMetrics(ctx, w.MetricsAddr); err == nil {
			texts[fmt.Sprintf("worker %d /metrics", w.N)] = body
			metrics++
		}
	}
	if metrics == 0 {
		rep.note("no worker serves /metrics on LLMQ_METRICS_ADDR yet: metric labels not searched")
	}

	var sources []string
	for src := range texts {
		sources = append(sources, src)
	}
	sort.Strings(sources)
	total, lines := 0, 0
	for _, src := range sources {
		text := texts[src]
		lines += strings.Count(text, "\n")
		for _, nd := range needles {
			if c := strings.Count(text, nd); c > 0 {
				total += c
				rep.fail("the API key appears %d times in %s", c, src)
			}
		}
	}
	rep.note("searched %d sources (%d lines, %d + %d Redis keys, %d tasks, %d /metrics) for the key and its masked middle: %d hits",
		len(sources), lines, keys, keys2, len(archived)+len(completed), metrics, total)
	rep.note("the fake upstream accepted the key on %d requests (%s)", st.Requests, counts(st.ByStatus))
	return rep, nil
}

// dumpRedis renders every key and value of the drill's Redis as text and
// returns it with the number of keys.
func dumpRedis(ctx context.Context, c redis.UniversalClient) (string, int, error) {
	var b strings.Builder
	n := 0
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		n++
		b.WriteString(k)
		b.WriteByte(' ')
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			return "", n, fmt.Errorf("TYPE %s: %w", k, err)
		}
		var v any
		switch typ {
		case "string":
			v, err = c.Get(ctx, k).Result()
		case "hash":
			v, err = c.HGetAll(ctx, k).Result()
		case "list":
			v, err = c.LRange(ctx, k, 0, -1).Result()
		case "set":
			v, err = c.SMembers(ctx, k).Result()
		case "zset":
			v, err = c.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "stream":
			v, err = c.XRange(ctx, k, "-", "+").Result()
		}
		if err != nil && err != redis.Nil {
			return "", n, fmt.Errorf("read %s (%s): %w", k, typ, err)
		}
		fmt.Fprintf(&b, "%v\n", v)
	}
	if err := iter.Err(); err != nil {
		return "", n, fmt.Errorf("SCAN: %w", err)
	}
	return b.String(), n, nil
}

// getMetrics returns the body of GET http://addr/metrics.
func getMetrics(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), nil
}
