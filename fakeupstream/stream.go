package fakeupstream

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// writeStream sends a as OpenAI streams it (text/event-stream): one chunk
// per choice per step (n > 1 interleaved), the role first, then the
// fragments spread evenly over gen, the finish_reason, the usage chunk with
// "choices": [] when include_usage is set, and "data: [DONE]". The
// headers leave at once; a thinking model then sends nothing for think. A
// stall, cut or streamerror fault breaks it after half the steps. It
// reports whether the whole stream was written.
func (s *Server) writeStream(ctx context.Context, w http.ResponseWriter, a *answer, opts wireOptions, fault Fault, think, gen time.Duration) bool {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if think > 0 && (rc.Flush() != nil || !sleep(ctx, think)) {
		return false
	}
	write := func(data []byte) bool {
		var b bytes.Buffer
		b.WriteString("data: ")
		b.Write(data)
		b.WriteString("\n\n")
		if _, err := w.Write(b.Bytes()); err != nil {
			return false
		}
		return rc.Flush() == nil
	}

	evs := a.events()
	steps := 0
	for _, e := range evs {
		steps = max(steps, len(e)-1)
	}
	var interval time.Duration
	if steps > 0 {
		interval = gen / time.Duration(steps)
	}
	breakAt := max(1, steps/2)
	for k := 0; k <= steps; k++ {
		if k > 0 && !sleep(ctx, interval) {
			return false
		}
		if k == breakAt {
			switch fault.Kind {
			case FaultStall:
				select {
				case <-ctx.Done():
				case <-s.closed:
					hijackClose(w, false)
				}
				return false
			case FaultCut:
				hijackClose(w, false)
				return false
			case FaultStreamError:
				write(s.streamErrorEvent(fault.Status, a.comp.Model))
				return false
			}
		}
		for i := range evs {
			if k < len(evs[i]) && !write(a.chunkOf([]chunkChoice{evs[i][k]}, opts.IncludeUsage)) {
				return false
			}
		}
	}
	if opts.IncludeUsage && !write(a.usageChunk()) {
		return false
	}
	return write([]byte("[DONE]"))
}

// streamErrorEvent is the data of an error event naming status: OpenAI's
// mid-stream server_error for 500 (or 0), else the status's OpenAI error
// object with the status as a numeric code.
func (s *Server) streamErrorEvent(status int, model string) []byte {
	if status == 0 || status == http.StatusInternalServerError {
		return openAIError(http.StatusInternalServerError, "The server had an error while processing your request. Sorry about that!", "server_error", "", "").body
	}
	msg, typ := http.StatusText(status)+".", "server_error"
	if status < 500 {
		typ = "invalid_request_error"
	}
	var e struct {
		Error apiError `json:"error"`
	}
	if json.Unmarshal(s.statusReply(status, model).body, &e) == nil && e.Error.Message != "" {
		msg, typ = e.Error.Message, e.Error.Type
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": status}})
	return b
}

// writeStalled sends a plain answer's headers and half its body, then
// nothing until the client goes away or the server closes.
func (s *Server) writeStalled(ctx context.Context, w http.ResponseWriter, rep reply) {
	writeHead(w, rep)
	_, _ = w.Write(rep.body[:len(rep.body)/2])
	_ = http.NewResponseController(w).Flush()
	select {
	case <-ctx.Done():
	case <-s.closed:
		hijackClose(w, false)
	}
}
