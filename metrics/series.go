package metrics

import (
	"sync"
)

// maxCachedSeries bounds the job path's series cache: past it (a producer
// inventing model names), lookups go through WithLabelValues again.
const maxCachedSeries = 1024

// seriesKey names one series the job path touches on every call: its
// vector (one of the series* constants) and its raw label values.
type seriesKey struct {
	metric                              int
	model, status, class, outcome, kind string
}

// The vectors whose series are cached.
const (
	seriesRequests = iota
	seriesDuration
	seriesTokens
	seriesJobs
)

// seriesCache keeps the series of the job path (calls, their duration,
// tokens, job outcomes) once looked up: WithLabelValues hashes its labels
// and locks its vector on every call, a read-locked map lookup costs less.
// The raw model name is in the key, so a hit also skips Label and the
// seen-models bookkeeping (done at the first lookup).
type seriesCache struct {
	mu sync.RWMutex
	m  map[seriesKey]any // prometheus.Counter or prometheus.Observer
}

func (c *seriesCache) load(k seriesKey) (any, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, ok := c.m[k]
	return s, ok
}

// store caches s under k while there is room.
func (c *seriesCache) store(k seriesKey, s any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[seriesKey]any{}
	}
	if len(c.m) < maxCachedSeries {
		c.m[k] = s
	}
}

// cached returns k's series, from the cache or lookup (a counter or an
// observer).
func cached[T any](m *Metrics, k seriesKey, lookup func() T) T {
	if s, ok := m.series.load(k); ok {
		return s.(T)
	}
	v := lookup()
	m.series.store(k, v)
	return v
}
