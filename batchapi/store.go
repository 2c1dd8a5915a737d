package batchapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"
)

// ChunkBytes is the size of the pieces file content is stored in: an upload
// or a download holds one chunk in memory at a time.
const ChunkBytes = 1 << 20

// uploadTTL bounds the life of the chunks of an upload that never finished
// (the server died mid-upload): they expire on their own.
const uploadTTL = time.Hour

// ErrNotFound is returned for an object that does not exist, or that
// belongs to another tenant (the two are never told apart).
var ErrNotFound = errors.New("not found")

// ErrTooLarge is returned when an upload exceeds the file size limit.
var ErrTooLarge = errors.New("file too large")

// store keeps files and batches in Redis. Each object lives under its own
// hash tag (Redis Cluster safe); each tenant has a sorted index per kind.
type store struct {
	rdb     redis.UniversalClient
	prefix  string
	fileTTL time.Duration
}

func (s *store) fileKey(id string) string     { return s.prefix + ":api:file:{" + id + "}" }
func (s *store) fileDataKey(id string) string { return s.fileKey(id) + ":data" }
func (s *store) batchKey(id string) string    { return s.prefix + ":api:batch:{" + id + "}" }
func (s *store) lockKey(id string) string     { return s.batchKey(id) + ":lock" }
func (s *store) cancelKey(id string) string   { return s.batchKey(id) + ":cancel" }
func (s *store) removedKey(id string) string  { return s.batchKey(id) + ":removed" }
func (s *store) activeKey() string            { return s.prefix + ":api:active" }
func (s *store) indexKey(tenant, kind string) string {
	return s.prefix + ":api:tenant:" + tenant + ":" + kind
}

// fileRecord is a stored file: the object and its owner.
type fileRecord struct {
	File   File   `json:"file"`
	Tenant string `json:"tenant"`
	Chunks int    `json:"chunks"`
}

// batchRecord is a stored batch: the object, its owner, and what the
// server needs to drive it.
type batchRecord struct {
	Batch  Batch  `json:"batch"`
	Tenant string `json:"tenant"`
	Queue  string `json:"queue"`
	// Expiring is set once the completion window passed: the batch is
	// removing what remains, then goes expired.
	Expiring bool `json:"expiring,omitempty"`
}

func newID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// putFile streams r into Redis chunks under a new file id, at most max
// bytes (ErrTooLarge beyond), and records the file for tenant.
func (s *store) putFile(ctx context.Context, tenant, filename, purpose string, r io.Reader, max int64, now time.Time) (*File, error) {
	id := newID("file-")
	w := &chunkWriter{ctx: ctx, rdb: s.rdb, key: s.fileDataKey(id), ttl: uploadTTL, max: max}
	if _, err := io.Copy(w, r); err != nil {
		s.rdb.Del(context.WithoutCancel(ctx), w.key)
		return nil, err
	}
	if err := w.Close(); err != nil {
		s.rdb.Del(context.WithoutCancel(ctx), w.key)
		return nil, err
	}
	f := File{ID: id, Object: "file", Bytes: w.n, CreatedAt: now.Unix(), ExpiresAt: now.Add(s.fileTTL).Unix(),
		Filename: filename, Purpose: purpose, Status: "processed"}
	if err := s.saveFile(ctx, &fileRecord{File: f, Tenant: tenant, Chunks: w.chunks}, now); err != nil {
		s.rdb.Del(context.WithoutCancel(ctx), w.key)
		return nil, err
	}
	return &f, nil
}

// saveFile records a file whose chunks are written, and makes it visible.
func (s *store) saveFile(ctx context.Context, rec *fileRecord, now time.Time) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode file %s: %w", rec.File.ID, err)
	}
	pipe := s.rdb.TxPipeline()
	pipe.Set(ctx, s.fileKey(rec.File.ID), b, s.fileTTL)
	pipe.Expire(ctx, s.fileDataKey(rec.File.ID), s.fileTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("store file %s: %w", rec.File.ID, err)
	}
	if err := s.rdb.ZAdd(ctx, s.indexKey(rec.Tenant, "files"), redis.Z{Score: float64(now.UnixMilli()), Member: rec.File.ID}).Err(); err != nil {
		return fmt.Errorf("index file %s: %w", rec.File.ID, err)
	}
	return nil
}

// file returns tenant's file id, or ErrNotFound.
func (s *store) file(ctx context.Context, tenant, id string) (*fileRecord, error) {
	b, err := s.rdb.Get(ctx, s.fileKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read file %s: %w", id, err)
	}
	var rec fileRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("decode file %s: %w", id, err)
	}
	if rec.Tenant != tenant {
		return nil, ErrNotFound
	}
	return &rec, nil
}

// deleteFile removes tenant's file id, or returns ErrNotFound.
func (s *store) deleteFile(ctx context.Context, tenant, id string) error {
	if _, err := s.file(ctx, tenant, id); err != nil {
		return err
	}
	if err := s.rdb.Del(ctx, s.fileKey(id), s.fileDataKey(id)).Err(); err != nil {
		return fmt.Errorf("delete file %s: %w", id, err)
	}
	return s.rdb.ZRem(ctx, s.indexKey(tenant, "files"), id).Err()
}

// content returns a reader over a file's chunks, one chunk in memory at a
// time. It seeks, so a reader that needs two passes (EnqueueBatch) reads
// the file in place rather than copying it.
func (s *store) content(ctx context.Context, rec *fileRecord) io.ReadSeeker {
	return &chunkReader{ctx: ctx, rdb: s.rdb, key: s.fileDataKey(rec.File.ID), n: rec.Chunks, size: rec.File.Bytes}
}

// page lists ids from a tenant's index, newest first, after the id after
// (exclusive), up to limit; more reports whether others follow.
func (s *store) page(ctx context.Context, key, after string, limit int) (ids []string, more bool, err error) {
	start := int64(0)
	if after != "" {
		rank, err := s.rdb.ZRevRank(ctx, key, after).Result()
		if errors.Is(err, redis.Nil) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("list: %w", err)
		}
		start = rank + 1
	}
	ids, err = s.rdb.ZRevRange(ctx, key, start, start+int64(limit)).Result()
	if err != nil {
		return nil, false, fmt.Errorf("list: %w", err)
	}
	if len(ids) > limit {
		return ids[:limit], true, nil
	}
	return ids, false, nil
}

// saveBatch writes a batch record.
func (s *store) saveBatch(ctx context.Context, rec *batchRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode batch %s: %w", rec.Batch.ID, err)
	}
	if err := s.rdb.Set(ctx, s.batchKey(rec.Batch.ID), b, s.fileTTL).Err(); err != nil {
		return fmt.Errorf("store batch %s: %w", rec.Batch.ID, err)
	}
	return nil
}

// batch reads a batch record; tenant "" reads any tenant's.
func (s *store) batch(ctx context.Context, tenant, id string) (*batchRecord, error) {
	b, err := s.rdb.Get(ctx, s.batchKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read batch %s: %w", id, err)
	}
	var rec batchRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("decode batch %s: %w", id, err)
	}
	if tenant != "" && rec.Tenant != tenant {
		return nil, ErrNotFound
	}
	return &rec, nil
}

// chunkWriter appends what is written to a Redis list, ChunkBytes at a
// time, refusing more than max bytes.
type chunkWriter struct {
	ctx    context.Context
	rdb    redis.UniversalClient
	key    string
	ttl    time.Duration
	max    int64
	buf    []byte
	n      int64
	chunks int
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if w.max > 0 && w.n+int64(len(p)) > w.max {
		return 0, ErrTooLarge
	}
	written := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = make([]byte, 0, ChunkBytes)
		}
		k := min(len(p), ChunkBytes-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		written += k
		w.n += int64(k)
		if len(w.buf) == ChunkBytes {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	pipe := w.rdb.Pipeline()
	pipe.RPush(w.ctx, w.key, w.buf)
	pipe.Expire(w.ctx, w.key, w.ttl)
	if _, err := pipe.Exec(w.ctx); err != nil {
		return fmt.Errorf("store file content: %w", err)
	}
	w.chunks++
	w.buf = w.buf[:0]
	return nil
}

// Close writes the last chunk.
func (w *chunkWriter) Close() error { return w.flush() }

// chunkReader reads a Redis list of chunks in order. Every chunk but the
// last holds ChunkBytes (chunkWriter writes them so), which is how it
// seeks.
type chunkReader struct {
	ctx  context.Context
	rdb  redis.UniversalClient
	key  string
	n    int   // chunks
	size int64 // bytes
	i    int   // the next chunk to read
	skip int   // bytes of chunk i to skip (after a seek)
	pos  int64
	cur  []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.i >= r.n {
			return 0, io.EOF
		}
		b, err := r.rdb.LIndex(r.ctx, r.key, int64(r.i)).Bytes()
		if err != nil {
			return 0, fmt.Errorf("read file content chunk %d: %w", r.i, err)
		}
		r.cur = b[min(r.skip, len(b)):]
		r.i, r.skip = r.i+1, 0
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.pos += int64(n)
	return n, nil
}

// Seek sets where the next Read starts (io.Seeker).
func (r *chunkReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return r.pos, fmt.Errorf("seek file content: whence %d", whence)
	}
	if offset < 0 {
		return r.pos, errors.New("seek file content: negative position")
	}
	r.pos, r.cur = offset, nil
	r.i, r.skip = int(offset/ChunkBytes), int(offset%ChunkBytes)
	return offset, nil
}
