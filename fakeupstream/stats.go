package fakeupstream

import (
	"maps"
	"strconv"
	"sync"
	"time"
)

// Stats counts what the server served on its chat-completions routes since
// it started or was last Reset. It is the JSON of GET /_fake/stats.
type Stats struct {
	// Requests counts every chat-completions request received.
	Requests int64 `json:"requests"`
	// ByStatus counts answers by HTTP status ("200", "429", ...). Requests
	// that got no answer (hang, reset, client gone) have no status.
	ByStatus map[string]int64 `json:"by_status"`
	// ByFault counts injected faults by name: the kind ("hang",
	// "ratelimit", "latency", ...) or the status of a plain status fault
	// ("503").
	ByFault map[string]int64 `json:"by_fault"`
	// ByModel counts requests by the model they named (Azure: deployment).
	ByModel map[string]int64 `json:"by_model"`
	// RequestsByKey counts requests by their X-Fake-Key header.
	RequestsByKey map[string]int64 `json:"requests_by_key"`
	// RateLimited counts every 429 answered, injected or not.
	RateLimited int64 `json:"rate_limited"`
	// Throttled counts the 429s of the configured RPM/TPM limits (including
	// requests too large for the TPM limit): zero when clients kept to the
	// budget.
	Throttled int64 `json:"throttled"`
	// PromptTokens and CompletionTokens sum the usage of the completions
	// served.
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	// InFlight is the number of requests being handled now; MaxInFlight the
	// most at once.
	InFlight    int64 `json:"in_flight"`
	MaxInFlight int64 `json:"max_in_flight"`
	// FirstRequestAt and LastRequestAt are the arrival times of the first
	// and last requests (the server's clock).
	FirstRequestAt time.Time `json:"first_request_at,omitzero"`
	LastRequestAt  time.Time `json:"last_request_at,omitzero"`
}

// statsState is the mutex-guarded live Stats.
type statsState struct {
	mu sync.Mutex
	s  Stats
}

func newStatsState() *statsState {
	st := &statsState{}
	st.s = emptyStats(0)
	return st
}

func emptyStats(inFlight int64) Stats {
	return Stats{
		ByStatus:      map[string]int64{},
		ByFault:       map[string]int64{},
		ByModel:       map[string]int64{},
		RequestsByKey: map[string]int64{},
		InFlight:      inFlight,
		MaxInFlight:   inFlight,
	}
}

func (st *statsState) begin(now time.Time, key string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.Requests++
	if st.s.FirstRequestAt.IsZero() {
		st.s.FirstRequestAt = now
	}
	st.s.LastRequestAt = now
	if key != "" {
		st.s.RequestsByKey[key]++
	}
	st.s.InFlight++
	st.s.MaxInFlight = max(st.s.MaxInFlight, st.s.InFlight)
}

func (st *statsState) end(status int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.InFlight--
	if status != 0 {
		st.s.ByStatus[strconv.Itoa(status)]++
	}
	if status == 429 {
		st.s.RateLimited++
	}
}

func (st *statsState) update(f func(s *Stats)) {
	st.mu.Lock()
	defer st.mu.Unlock()
	f(&st.s)
}

func (st *statsState) snapshot() Stats {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.s
	s.ByStatus = maps.Clone(st.s.ByStatus)
	s.ByFault = maps.Clone(st.s.ByFault)
	s.ByModel = maps.Clone(st.s.ByModel)
	s.RequestsByKey = maps.Clone(st.s.RequestsByKey)
	return s
}

// reset zeroes the counters; requests in flight stay counted as in flight.
func (st *statsState) reset() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s = emptyStats(st.s.InFlight)
}
