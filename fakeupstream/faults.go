package fakeupstream

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrInvalidFaults is matched (errors.Is) by every error ParseFaults returns.
var ErrInvalidFaults = errors.New("invalid fault spec")

// specError is a problem with a fault SPEC; it is an ErrInvalidFaults.
type specError struct{ msg string }

func (e *specError) Error() string        { return e.msg }
func (e *specError) Is(target error) bool { return target == ErrInvalidFaults }

func specErrorf(format string, args ...any) error {
	return &specError{msg: fmt.Sprintf(format, args...)}
}

// FaultKind names an injected behaviour.
type FaultKind string

// Fault kinds. The zero kind is a normal answer.
const (
	// FaultStatus answers with Fault.Status and OpenAI's real body for it.
	FaultStatus FaultKind = "status"
	// FaultHang never answers; the request ends when the client goes away.
	FaultHang FaultKind = "hang"
	// FaultReset closes the TCP connection with a RST and no answer.
	FaultReset FaultKind = "reset"
	// FaultMalformed answers 200 with a body that is not valid JSON.
	FaultMalformed FaultKind = "malformed"
	// FaultTruncated answers 200 with a Content-Length larger than the body
	// sent, then closes the connection.
	FaultTruncated FaultKind = "truncated"
	// FaultSlow answers 200 with the body written in chunks over Fault.Delay
	// (default Config.Latency×4, or 2 s without latency).
	FaultSlow FaultKind = "slow"
	// FaultLatency answers normally after Fault.Delay more than usual.
	FaultLatency FaultKind = "latency"
	// FaultQuota answers 429 insufficient_quota.
	FaultQuota FaultKind = "quota"
	// FaultRateLimit answers 429 rate_limit_exceeded with retry-after-ms
	// Fault.Delay (default 1 s).
	FaultRateLimit FaultKind = "ratelimit"
	// FaultContext answers 400 context_length_exceeded.
	FaultContext FaultKind = "context"
	// FaultNotFound answers 404 model_not_found.
	FaultNotFound FaultKind = "notfound"
	// FaultPolicy answers 400 content_policy_violation.
	FaultPolicy FaultKind = "policy"
	// FaultRegion answers 403 unsupported_country_region_territory.
	FaultRegion FaultKind = "region"
	// FaultOverloaded answers 529 with Anthropic's overloaded_error body.
	FaultOverloaded FaultKind = "overloaded"
	// FaultAzure429 answers 429 with Azure OpenAI's body and Retry-After: 2.
	FaultAzure429 FaultKind = "azure429"
	// FaultStall sends half the answer, then nothing more, holding the
	// connection open until the client goes away: a stream goes silent
	// mid-answer (a plain answer stops mid-body).
	FaultStall FaultKind = "stall"
	// FaultCut sends half the answer, then closes the connection: a stream
	// ends before its [DONE] (a plain answer is truncated).
	FaultCut FaultKind = "cut"
	// FaultStreamError streams half the answer, then an error event naming
	// Fault.Status (default 500: OpenAI's server_error, code null; another
	// status is written with it as a numeric code, as vLLM does), and ends
	// the stream. A plain answer is that status's error answer.
	FaultStreamError FaultKind = "streamerror"
	// FaultRefusal answers with a refusal (message.refusal set, content
	// null) instead of the echo.
	FaultRefusal FaultKind = "refusal"
	// FaultExtras adds fields no client type knows at every level of the
	// answer: x_fake_trace (top level and every chunk),
	// content_filter_results (choice) and reasoning_content (message,
	// streamed in fragments).
	FaultExtras FaultKind = "extras"
	// FaultGenerate makes the answer take Fault.Delay to generate (see
	// Config.GenerationTime).
	FaultGenerate FaultKind = "generate"
	// FaultThink makes the model reason for Fault.Delay before its first
	// token (see Config.ThinkTime).
	FaultThink FaultKind = "think"
	// FaultEchoKey answers 200 normally but echoes the request's API key
	// the way a careless proxy might: in x-request-id ("req_<key>") and,
	// JSON-escaped (\u0073\u006b…), in the message content.
	FaultEchoKey FaultKind = "echokey"
)

// namedFault reports whether kind may be named in a SPEC, and whether it
// takes a ":duration" argument (required for latency).
func namedFault(kind FaultKind) (ok, takesArg bool) {
	switch kind {
	case FaultSlow, FaultLatency, FaultRateLimit, FaultGenerate, FaultThink:
		return true, true
	case FaultHang, FaultReset, FaultMalformed, FaultTruncated, FaultQuota, FaultContext,
		FaultNotFound, FaultPolicy, FaultRegion, FaultOverloaded, FaultAzure429, FaultEchoKey,
		FaultStall, FaultCut, FaultRefusal, FaultExtras, FaultStreamError:
		return true, false
	}
	return false, false
}

const faultNames = "hang, reset, malformed, truncated, slow[:D], latency:D, quota, ratelimit[:D], context, notfound, policy, region, overloaded, azure429, echokey, stall, cut, streamerror[:STATUS], refusal, extras, generate:D, think:D"

// Fault is one injected behaviour. The zero Fault is a normal answer.
type Fault struct {
	// Kind is what happens; "" is a normal answer.
	Kind FaultKind
	// Status is the HTTP status of a FaultStatus.
	Status int
	// Delay is the argument of slow, latency and ratelimit (0: default).
	Delay time.Duration
}

// String returns the fault as a SPEC element, e.g. "503", "ratelimit:1.2s"
// or "200" for a normal answer.
func (f Fault) String() string {
	switch {
	case f.Kind == "":
		return "200"
	case f.Kind == FaultStatus:
		return strconv.Itoa(f.Status)
	case f.Kind == FaultStreamError && f.Status != 0:
		return string(f.Kind) + ":" + strconv.Itoa(f.Status)
	case f.Delay > 0:
		return string(f.Kind) + ":" + f.Delay.String()
	}
	return string(f.Kind)
}

// name is the key the fault is counted under in Stats.ByFault: its kind, or
// its status for a FaultStatus. A normal answer has no name.
func (f Fault) name() string {
	switch f.Kind {
	case "":
		return ""
	case FaultStatus:
		return strconv.Itoa(f.Status)
	}
	return string(f.Kind)
}

// isError reports whether the fault replaces the answer entirely. Such
// faults are answered before the RPM/TPM limiter and are not charged; the
// others (normal, latency, slow, malformed, truncated) go through the
// limiter and are charged like a normal request.
func (f Fault) isError() bool {
	switch f.Kind {
	case "", FaultLatency, FaultSlow, FaultMalformed, FaultTruncated, FaultEchoKey,
		FaultStall, FaultCut, FaultStreamError, FaultRefusal, FaultExtras, FaultGenerate, FaultThink:
		return false
	}
	return true
}

// Step is one element of a fault sequence: Fault, Times times in a row.
type Step struct {
	Fault Fault
	Times int
}

// Chance is one entry of a random fault SPEC: Fault happens with
// Probability (0..1) on each request.
type Chance struct {
	Fault       Fault
	Probability float64
}

// FaultPlan is a parsed fault SPEC: either a sequence consumed one element
// per request (normal answers once exhausted) or, when Random is non-empty,
// independent chances drawn on every request forever. The zero FaultPlan
// injects nothing.
type FaultPlan struct {
	Sequence []Step
	Random   []Chance
}

// IsZero reports whether the plan injects nothing.
func (p FaultPlan) IsZero() bool { return len(p.Sequence) == 0 && len(p.Random) == 0 }

// String returns the plan as a canonical SPEC.
func (p FaultPlan) String() string {
	var parts []string
	if len(p.Random) > 0 {
		for _, c := range p.Random {
			pct := strconv.FormatFloat(c.Probability*100, 'f', -1, 64) + "%"
			if c.Fault.Kind == FaultLatency {
				parts = append(parts, "latency="+c.Fault.Delay.String()+"@"+pct)
				continue
			}
			parts = append(parts, c.Fault.String()+"="+pct)
		}
		return "random:" + strings.Join(parts, ",")
	}
	for _, s := range p.Sequence {
		e := s.Fault.String()
		if s.Times > 1 {
			e += "x" + strconv.Itoa(s.Times)
		}
		parts = append(parts, e)
	}
	return strings.Join(parts, ",")
}

// ParseFaults parses a fault SPEC.
//
// A sequence is comma-separated elements, one consumed per request; after
// the last one requests are answered normally. An element is a status code
// (200 = normal, 400-599 = that status with OpenAI's real body) or a named
// fault: hang, reset, malformed, truncated, slow[:D], latency:D, quota,
// ratelimit[:D], context, notfound, policy, region, overloaded, azure429,
// echokey, stall, cut, streamerror[:STATUS], refusal, extras, generate:D,
// think:D. A
// suffix xN repeats it: "503x3,200" is three 503s then a 200.
//
// "random:" followed by name=P entries draws every request forever:
// "random:500=5%,reset=2%,hang=1%,ratelimit=3%,latency=200ms@5%". P is a
// percentage ("5%") or a fraction ("0.05"); the non-latency chances are
// mutually exclusive and must sum to at most 100%, a latency chance adds its
// delay independently.
//
// The empty SPEC is the zero plan. Errors name the bad element and match
// ErrInvalidFaults.
func ParseFaults(spec string) (FaultPlan, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return FaultPlan{}, nil
	}
	if rest, ok := strings.CutPrefix(spec, "random:"); ok {
		return parseRandom(rest)
	}
	var plan FaultPlan
	for i, el := range strings.Split(spec, ",") {
		el = strings.TrimSpace(el)
		times := 1
		if j := strings.LastIndexByte(el, 'x'); j > 0 && j < len(el)-1 && allDigits(el[j+1:]) {
			n, err := strconv.Atoi(el[j+1:])
			if err != nil || n < 1 || n > 1_000_000_000 {
				return FaultPlan{}, specErrorf("element %d %q: repeat must be 1 or more", i+1, el)
			}
			times, el = n, el[:j]
		}
		f, err := parseFault(el, i+1)
		if err != nil {
			return FaultPlan{}, err
		}
		plan.Sequence = append(plan.Sequence, Step{Fault: f, Times: times})
	}
	return plan, nil
}

func parseRandom(rest string) (FaultPlan, error) {
	var plan FaultPlan
	sum := 0.0
	for i, entry := range strings.Split(rest, ",") {
		entry = strings.TrimSpace(entry)
		el, p, ok := strings.Cut(entry, "=")
		if !ok {
			return FaultPlan{}, specErrorf("random entry %d %q: want name=P%%, e.g. 500=5%%", i+1, entry)
		}
		if el == string(FaultLatency) {
			d, pp, ok := strings.Cut(p, "@")
			if !ok {
				return FaultPlan{}, specErrorf("random entry %d %q: want latency=D@P%%, e.g. latency=200ms@5%%", i+1, entry)
			}
			el, p = "latency:"+d, pp
		}
		f, err := parseFault(el, i+1)
		if err != nil {
			return FaultPlan{}, err
		}
		prob, err := parseProbability(p)
		if err != nil {
			return FaultPlan{}, specErrorf("random entry %d %q: %v", i+1, entry, err)
		}
		if f.Kind != FaultLatency {
			sum += prob
		}
		plan.Random = append(plan.Random, Chance{Fault: f, Probability: prob})
	}
	if sum > 1+1e-9 {
		return FaultPlan{}, specErrorf("random chances sum to %g%%; they are exclusive and must sum to at most 100%%", sum*100)
	}
	return plan, nil
}

func parseProbability(s string) (float64, error) {
	s = strings.TrimSpace(s)
	scale := 1.0
	if t, ok := strings.CutSuffix(s, "%"); ok {
		s, scale = t, 0.01
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f*scale <= 0 || f*scale > 1 {
		return 0, errors.New("probability must be in (0%, 100%], e.g. 5% or 0.05")
	}
	return f * scale, nil
}

// parseFault parses one element without its repeat suffix.
func parseFault(el string, pos int) (Fault, error) {
	if el == "" {
		return Fault{}, specErrorf("element %d is empty", pos)
	}
	if allDigits(el) {
		code, _ := strconv.Atoi(el)
		switch {
		case code == 200:
			return Fault{}, nil
		case code >= 400 && code <= 599:
			return Fault{Kind: FaultStatus, Status: code}, nil
		}
		return Fault{}, specErrorf("element %d: status %s not supported: use 200 or 400-599", pos, el)
	}
	name, arg, hasArg := strings.Cut(el, ":")
	kind := FaultKind(name)
	ok, takesArg := namedFault(kind)
	if !ok {
		return Fault{}, specErrorf("unknown fault %q (element %d): want a status code (200, 400-599) or one of %s", el, pos, faultNames)
	}
	f := Fault{Kind: kind}
	if kind == FaultStreamError && hasArg {
		code, err := strconv.Atoi(arg)
		if err != nil || code < 400 || code > 599 {
			return Fault{}, specErrorf("element %d %q: streamerror takes a status 400-599, e.g. streamerror:429", pos, el)
		}
		f.Status = code
		return f, nil
	}
	switch {
	case hasArg && !takesArg:
		return Fault{}, specErrorf("element %d %q: %s takes no argument", pos, el, name)
	case hasArg:
		d, err := time.ParseDuration(arg)
		if err != nil || d <= 0 {
			return Fault{}, specErrorf("element %d %q: argument must be a positive duration such as 1200ms", pos, el)
		}
		f.Delay = d
	case kind == FaultLatency, kind == FaultGenerate, kind == FaultThink:
		return Fault{}, specErrorf("element %d %q: %s needs a duration, e.g. %s:200ms", pos, el, name, name)
	}
	return f, nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// cursor walks a plan; it is guarded by faultState.mu.
type cursor struct {
	plan FaultPlan
	step int // index into plan.Sequence
	done int // elements of the current step consumed
}

// next returns the fault for one request and any extra latency drawn by a
// random plan.
func (c *cursor) next(rng *rand.Rand) (Fault, time.Duration) {
	if len(c.plan.Random) > 0 {
		var (
			f     Fault
			extra time.Duration
		)
		u, acc := rng.Float64(), 0.0
		picked := false
		for _, ch := range c.plan.Random {
			if ch.Fault.Kind == FaultLatency {
				if rng.Float64() < ch.Probability {
					extra += ch.Fault.Delay
				}
				continue
			}
			acc += ch.Probability
			if !picked && u < acc {
				f, picked = ch.Fault, true
			}
		}
		return f, extra
	}
	for c.step < len(c.plan.Sequence) {
		s := c.plan.Sequence[c.step]
		if c.done < s.Times {
			c.done++
			if s.Fault.Kind == FaultLatency {
				return s.Fault, s.Fault.Delay
			}
			return s.Fault, 0
		}
		c.step, c.done = c.step+1, 0
	}
	return Fault{}, 0
}

// maxHeaderCursors bounds the per-header cursors kept; past it they are
// forgotten (sequences restart), which only a misbehaving client notices.
const maxHeaderCursors = 100_000

// faultState holds the default, per-model and per-header cursors.
type faultState struct {
	mu      sync.Mutex
	seed    int64
	rng     *rand.Rand
	def     cursor
	models  map[string]*cursor
	headers map[string]*cursor
}

func newFaultState(seed int64, def FaultPlan) *faultState {
	return &faultState{
		seed:    seed,
		rng:     rand.New(rand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15)),
		def:     cursor{plan: def},
		models:  map[string]*cursor{},
		headers: map[string]*cursor{},
	}
}

// pick returns the fault for one request. A header SPEC wins (its own
// cursor per header value and fake key), then a model-scoped plan, then the
// default.
func (fs *faultState) pick(headerSpec, key, model string) (Fault, time.Duration, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if headerSpec != "" {
		ck := headerSpec + "\x00" + key
		c, ok := fs.headers[ck]
		if !ok {
			plan, err := ParseFaults(headerSpec)
			if err != nil {
				return Fault{}, 0, fmt.Errorf("header X-Fake-Faults: %w", err)
			}
			if len(fs.headers) >= maxHeaderCursors {
				clear(fs.headers)
			}
			c = &cursor{plan: plan}
			fs.headers[ck] = c
		}
		f, d := c.next(fs.rng)
		return f, d, nil
	}
	if c, ok := fs.models[model]; ok {
		f, d := c.next(fs.rng)
		return f, d, nil
	}
	f, d := fs.def.next(fs.rng)
	return f, d, nil
}

func (fs *faultState) setDefault(plan FaultPlan) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.def = cursor{plan: plan}
}

func (fs *faultState) setModel(model string, plan FaultPlan) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if plan.IsZero() {
		delete(fs.models, model)
		return
	}
	fs.models[model] = &cursor{plan: plan}
}

// rewind restarts every sequence, forgets header cursors and reseeds the
// random source; the configured plans stay.
func (fs *faultState) rewind() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.def = cursor{plan: fs.def.plan}
	for m, c := range fs.models {
		fs.models[m] = &cursor{plan: c.plan}
	}
	clear(fs.headers)
	fs.rng = rand.New(rand.NewPCG(uint64(fs.seed), uint64(fs.seed)^0x9e3779b97f4a7c15))
}

// faultsView is the JSON of GET /_fake/faults: the configured plans.
type faultsView struct {
	Default string            `json:"default"`
	Models  map[string]string `json:"models"`
}

func (fs *faultState) view() faultsView {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	v := faultsView{Default: fs.def.plan.String(), Models: map[string]string{}}
	for m, c := range fs.models {
		v.Models[m] = c.plan.String()
	}
	return v
}

// echoKey makes a normal 200 answer echo key: in x-request-id, and
// \u-escaped in every message's content.
func echoKey(rep reply, key string) reply {
	var esc strings.Builder
	for _, r := range key {
		fmt.Fprintf(&esc, `\u%04x`, r)
	}
	rep.body = []byte(strings.ReplaceAll(string(rep.body), `","refusal"`, ` (key `+esc.String()+`)","refusal"`))
	return rep.with("x-request-id", "req_"+key)
}
