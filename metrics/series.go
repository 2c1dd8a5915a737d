package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
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

// counter returns k's counter, from the cache or lookup.
func (m *Metrics) counter(k seriesKey, lookup func() prometheus.Counter) prometheus.Counter {
	if s, ok := m.series.load(k); ok {
		return s.(prometheus.Counter)
	}
	c := lookup()
	m.series.store(k, c)
	return c
}

// observer returns k's observer, from the cache or lookup.
func (m *Metrics) observer(k seriesKey, lookup func() prometheus.Observer) prometheus.Observer {
	if s, ok := m.series.load(k); ok {
		return s.(prometheus.Observer)
	}
	o := lookup()
	m.series.store(k, o)
	return o
}
