package batchapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// multipartSlack is what a multipart body may carry beyond the file
// itself (boundaries, headers, the purpose field).
const multipartSlack = 1 << 20

// maxJSONBody bounds a JSON request body (POST /v1/batches).
const maxJSONBody = 1 << 20

type tenantKey struct{}

// apiMetrics are the API's Prometheus series.
type apiMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	upload   prometheus.Counter
}

func newAPIMetrics() *apiMetrics {
	m := &apiMetrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmq_api_requests_total",
			Help: "Batch API requests by route and HTTP status."}, []string{"route", "status"}),
		upload: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmq_api_upload_bytes_total",
			Help: "Bytes of file content uploaded to the Batch API and stored."}),
	}
	m.reg.MustRegister(m.requests, m.upload, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler returns the API: /v1/files and /v1/batches (bearer key
// required), /metrics and /healthz (open).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	api := func(pattern string, h func(http.ResponseWriter, *http.Request, string)) {
		mux.Handle(pattern, s.auth(h))
	}
	api("POST /v1/files", s.uploadFile)
	api("GET /v1/files", s.listFiles)
	api("GET /v1/files/{id}", s.getFile)
	api("GET /v1/files/{id}/content", s.fileContent)
	api("DELETE /v1/files/{id}", s.deleteFile)
	api("POST /v1/batches", s.createBatch)
	api("GET /v1/batches", s.listBatches)
	api("GET /v1/batches/{id}", s.getBatch)
	api("POST /v1/batches/{id}/cancel", s.cancelBatch)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.cfg.Redis.Ping(r.Context()).Err(); err != nil {
			http.Error(w, "redis does not answer", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "Unknown request URL: "+r.Method+" "+r.URL.Path+".", "", "unknown_url")
	})
	return s.count(mux, mux)
}

// count records each request by route pattern and status.
func (s *Service) count(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, route := mux.Handler(r)
		if route == "/" || route == "" {
			route = "other"
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// auth admits requests with a configured bearer key and passes on the
// tenant's name. The key is never logged.
func (s *Service) auth(h func(http.ResponseWriter, *http.Request, string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		tenant, found := s.keys.tenant(strings.TrimSpace(key))
		if !ok || !found {
			writeError(w, http.StatusUnauthorized, "Incorrect API key provided. Send a configured client key as \"Authorization: Bearer KEY\".", "", "invalid_api_key")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, tenant)), tenant)
	})
}

// writeError answers with OpenAI's error envelope.
func writeError(w http.ResponseWriter, status int, msg, param, code string) {
	body := ErrorBody{Error: APIError{Message: msg, Type: "invalid_request_error"}}
	if status >= 500 {
		body.Error.Type = "server_error"
	}
	if param != "" {
		body.Error.Param = ptr(param)
	}
	if code != "" {
		body.Error.Code = ptr(code)
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// internal answers a 500 and logs the cause (which holds no secret).
func (s *Service) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error().Err(err).Str("route", r.Pattern).Msg("batchapi: request failed")
	writeError(w, http.StatusInternalServerError, "The server had an error while processing your request.", "", "")
}

func notFound(w http.ResponseWriter, kind, id string) {
	writeError(w, http.StatusNotFound, fmt.Sprintf("No such %s: %s", kind, id), "id", "")
}

// uploadFile streams the multipart "file" part into Redis chunks.
func (s *Service) uploadFile(w http.ResponseWriter, r *http.Request, tenant string) {
	max := s.cfg.MaxFileBytes
	if r.ContentLength > max+multipartSlack {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("File is too large: the limit is %d bytes.", max), "file", "file_too_large")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, max+multipartSlack)
	mr, err := r.MultipartReader()
	if err != nil {
		writeError(w, http.StatusBadRequest, "Send the file as multipart/form-data with the fields file and purpose.", "file", "")
		return
	}
	var (
		purpose string
		file    *File
	)
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.dropUpload(r.Context(), tenant, file)
			if tooLarge(err) {
				writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("File is too large: the limit is %d bytes.", max), "file", "file_too_large")
				return
			}
			writeError(w, http.StatusBadRequest, "Could not read the multipart body: "+err.Error(), "file", "")
			return
		}
		switch part.FormName() {
		case "purpose":
			b, _ := io.ReadAll(io.LimitReader(part, 64))
			purpose = strings.TrimSpace(string(b))
		case "file":
			if file != nil {
				s.dropUpload(r.Context(), tenant, file)
				writeError(w, http.StatusBadRequest, "Send one file per upload.", "file", "")
				return
			}
			name := part.FileName()
			if name == "" {
				name = "upload.jsonl"
			}
			file, err = s.st.putFile(r.Context(), tenant, name, PurposeBatch, part, max, s.cfg.Now())
			if err != nil {
				if errors.Is(err, ErrTooLarge) || tooLarge(err) {
					writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("File is too large: the limit is %d bytes.", max), "file", "file_too_large")
					return
				}
				s.internal(w, r, err)
				return
			}
		}
		_ = part.Close()
	}
	switch {
	case file == nil:
		writeError(w, http.StatusBadRequest, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
	case purpose != PurposeBatch:
		s.dropUpload(r.Context(), tenant, file)
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid purpose %q: this server accepts files with purpose \"batch\" only.", purpose), "purpose", "")
	default:
		s.metrics.upload.Add(float64(file.Bytes))
		writeJSON(w, http.StatusOK, file)
	}
}

func tooLarge(err error) bool {
	var mb *http.MaxBytesError
	return errors.As(err, &mb)
}

func (s *Service) dropUpload(ctx context.Context, tenant string, f *File) {
	if f != nil {
		_ = s.st.deleteFile(context.WithoutCancel(ctx), tenant, f.ID)
	}
}

func (s *Service) getFile(w http.ResponseWriter, r *http.Request, tenant string) {
	rec, err := s.st.file(r.Context(), tenant, r.PathValue("id"))
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "File", r.PathValue("id"))
	case err != nil:
		s.internal(w, r, err)
	default:
		writeJSON(w, http.StatusOK, rec.File)
	}
}

func (s *Service) fileContent(w http.ResponseWriter, r *http.Request, tenant string) {
	rec, err := s.st.file(r.Context(), tenant, r.PathValue("id"))
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "File", r.PathValue("id"))
		return
	case err != nil:
		s.internal(w, r, err)
		return
	}
	ct := mime.TypeByExtension(".jsonl")
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.FormatInt(rec.File.Bytes, 10))
	if _, err := io.Copy(w, s.st.content(r.Context(), rec)); err != nil {
		s.log.Warn().Err(err).Str("file_id", rec.File.ID).Msg("batchapi: download cut short")
	}
}

func (s *Service) deleteFile(w http.ResponseWriter, r *http.Request, tenant string) {
	err := s.st.deleteFile(r.Context(), tenant, r.PathValue("id"))
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "File", r.PathValue("id"))
	case err != nil:
		s.internal(w, r, err)
	default:
		writeJSON(w, http.StatusOK, FileDeleted{ID: r.PathValue("id"), Object: "file", Deleted: true})
	}
}

// pageParams reads after and limit.
func pageParams(w http.ResponseWriter, r *http.Request, def, max int) (string, int, bool) {
	limit := def
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > max {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid limit %q: must be from 1 to %d.", v, max), "limit", "")
			return "", 0, false
		}
		limit = n
	}
	return r.URL.Query().Get("after"), limit, true
}

func (s *Service) listFiles(w http.ResponseWriter, r *http.Request, tenant string) {
	after, limit, ok := pageParams(w, r, DefaultFileListLimit, MaxFileListLimit)
	if !ok {
		return
	}
	purpose := r.URL.Query().Get("purpose")
	out := List[File]{Object: "list", Data: []File{}}
	key := s.st.indexKey(tenant, "files")
	for {
		ids, more, err := s.st.page(r.Context(), key, after, limit-len(out.Data))
		if err != nil {
			s.internal(w, r, err)
			return
		}
		for _, id := range ids {
			after = id
			rec, err := s.st.file(r.Context(), tenant, id)
			if errors.Is(err, ErrNotFound) {
				s.cfg.Redis.ZRem(r.Context(), key, id) // expired
				continue
			}
			if err != nil {
				s.internal(w, r, err)
				return
			}
			if purpose == "" || rec.File.Purpose == purpose {
				out.Data = append(out.Data, rec.File)
			}
		}
		out.HasMore = more
		if !more || len(out.Data) >= limit {
			break
		}
	}
	if n := len(out.Data); n > 0 {
		out.FirstID, out.LastID = ptr(out.Data[0].ID), ptr(out.Data[n-1].ID)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) createBatch(w http.ResponseWriter, r *http.Request, tenant string) {
	var req createRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "The body must be a JSON object: "+err.Error(), "", "")
		return
	}
	switch {
	case req.InputFileID == "":
		writeError(w, http.StatusBadRequest, "Missing required parameter: 'input_file_id'.", "input_file_id", "missing_required_parameter")
		return
	case req.Endpoint != "/v1/chat/completions":
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid endpoint %q: this server runs \"/v1/chat/completions\" only.", req.Endpoint), "endpoint", "")
		return
	case req.CompletionWindow != "24h":
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid completion_window %q: must be \"24h\".", req.CompletionWindow), "completion_window", "")
		return
	case len(req.Metadata) > 16:
		writeError(w, http.StatusBadRequest, "Invalid metadata: at most 16 keys.", "metadata", "")
		return
	}
	for k, v := range req.Metadata {
		if len(k) > 64 || len(v) > 512 {
			writeError(w, http.StatusBadRequest, "Invalid metadata: keys are at most 64 characters, values at most 512.", "metadata", "")
			return
		}
	}
	frec, err := s.st.file(r.Context(), tenant, req.InputFileID)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "File", req.InputFileID)
		return
	case err != nil:
		s.internal(w, r, err)
		return
	case frec.File.Purpose != PurposeBatch:
		writeError(w, http.StatusBadRequest, "The input file must be uploaded with purpose \"batch\".", "input_file_id", "")
		return
	}
	now := s.cfg.Now()
	b := Batch{ID: newID("batch_"), Object: "batch", Endpoint: req.Endpoint, InputFileID: req.InputFileID,
		CompletionWindow: req.CompletionWindow, Status: StatusValidating, CreatedAt: now.Unix(),
		ExpiresAt: ptr(now.Add(s.cfg.CompletionWindow).Unix()), Metadata: req.Metadata}
	rec := &batchRecord{Batch: b, Tenant: tenant, Queue: s.tenantQs[tenant]}
	if err := s.st.saveBatch(r.Context(), rec); err != nil {
		s.internal(w, r, err)
		return
	}
	pipe := s.cfg.Redis.TxPipeline()
	pipe.SAdd(r.Context(), s.st.activeKey(), b.ID)
	pipe.ZAdd(r.Context(), s.st.indexKey(tenant, "batches"), redisZ(now.UnixMilli(), b.ID))
	if _, err := pipe.Exec(r.Context()); err != nil {
		s.internal(w, r, err)
		return
	}
	s.kick(r.Context(), b.ID)
	s.answerBatch(w, r, tenant, b.ID)
}

// present returns the batch as a client sees it: live counts while it
// runs, and "cancelling" from the moment a cancel is asked for.
func (s *Service) present(ctx context.Context, rec *batchRecord) (Batch, error) {
	b := rec.Batch
	if terminal(b.Status) {
		return b, nil
	}
	c, err := s.counts(ctx, rec)
	if err != nil {
		return b, err
	}
	b.RequestCounts = c
	at, err := s.cancelRequested(ctx, b.ID)
	if err != nil {
		return b, err
	}
	if at != nil && (b.Status == StatusValidating || b.Status == StatusInProgress) {
		b.Status, b.CancellingAt = StatusCancelling, at
	}
	return b, nil
}

func (s *Service) answerBatch(w http.ResponseWriter, r *http.Request, tenant, id string) {
	b, err := s.loadBatch(r.Context(), tenant, id)
	if errors.Is(err, ErrNotFound) {
		notFound(w, "Batch", id)
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// loadBatch reads tenant's batch id and presents it as the API shows it;
// ErrNotFound when the tenant has no such batch.
func (s *Service) loadBatch(ctx context.Context, tenant, id string) (Batch, error) {
	rec, err := s.st.batch(ctx, tenant, id)
	if err != nil {
		return Batch{}, err
	}
	return s.present(ctx, rec)
}

func (s *Service) getBatch(w http.ResponseWriter, r *http.Request, tenant string) {
	id := r.PathValue("id")
	rec, err := s.st.batch(r.Context(), tenant, id)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "Batch", id)
		return
	case err != nil:
		s.internal(w, r, err)
		return
	}
	if !terminal(rec.Batch.Status) {
		s.kick(r.Context(), id)
	}
	s.answerBatch(w, r, tenant, id)
}

func (s *Service) cancelBatch(w http.ResponseWriter, r *http.Request, tenant string) {
	id := r.PathValue("id")
	rec, err := s.st.batch(r.Context(), tenant, id)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, "Batch", id)
		return
	case err != nil:
		s.internal(w, r, err)
		return
	case rec.Batch.Status == StatusCancelling || rec.Batch.Status == StatusCancelled:
		s.answerBatch(w, r, tenant, id)
		return
	case terminal(rec.Batch.Status) || rec.Batch.Status == StatusFinalizing:
		writeError(w, http.StatusConflict, fmt.Sprintf("Cannot cancel a batch with status %q.", rec.Batch.Status), "", "")
		return
	}
	if err := s.cfg.Redis.SetNX(r.Context(), s.st.cancelKey(id), s.cfg.Now().Unix(), s.cfg.FileTTL).Err(); err != nil {
		s.internal(w, r, err)
		return
	}
	s.kick(r.Context(), id)
	s.answerBatch(w, r, tenant, id)
}

func (s *Service) listBatches(w http.ResponseWriter, r *http.Request, tenant string) {
	after, limit, ok := pageParams(w, r, DefaultListLimit, MaxListLimit)
	if !ok {
		return
	}
	key := s.st.indexKey(tenant, "batches")
	ids, more, err := s.st.page(r.Context(), key, after, limit)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out := List[Batch]{Object: "list", Data: []Batch{}, HasMore: more}
	s.kickAll(r.Context(), ids)
	for _, id := range ids {
		b, err := s.loadBatch(r.Context(), tenant, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			s.internal(w, r, err)
			return
		}
		out.Data = append(out.Data, b)
	}
	if n := len(out.Data); n > 0 {
		out.FirstID, out.LastID = ptr(out.Data[0].ID), ptr(out.Data[n-1].ID)
	}
	writeJSON(w, http.StatusOK, out)
}
