package batchapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/llmqtest"
)

func TestParseKeysAndKeyring(t *testing.T) {
	cs, err := ParseKeys(" alice:sk-alice-0123456789abcdef , bob:sk-bob-0123456789abcdef01,")
	if err != nil || len(cs) != 2 || cs[0].Name != "alice" || cs[1].Key != "sk-bob-0123456789abcdef01" {
		t.Fatalf("ParseKeys: %+v %v", cs, err)
	}
	if err := checkClients(cs); err != nil {
		t.Fatal(err)
	}
	k := newKeyring(cs)
	if name, ok := k.tenant("sk-bob-0123456789abcdef01"); !ok || name != "bob" {
		t.Errorf("bob's key: %q %v", name, ok)
	}
	for _, bad := range []string{"", "sk-bob-0123456789abcdef0", "sk-bob-0123456789abcdef011"} {
		if name, ok := k.tenant(bad); ok {
			t.Errorf("key %q admitted as %q", bad, name)
		}
	}
	for _, tc := range []struct {
		in   []Client
		want error
	}{
		{nil, ErrNoClients},
		{[]Client{{"a b", "0123456789abcdef"}}, ErrBadClients},
		{[]Client{{"a", "short"}}, ErrBadClients},
		{[]Client{{"a", "0123456789abcdef"}, {"a", "0123456789abcdeg"}}, ErrBadClients},
		{[]Client{{"a", "0123456789abcdef"}, {"b", "0123456789abcdef"}}, ErrBadClients},
	} {
		err := checkClients(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "0123456789abcde") {
			t.Errorf("the error quotes a key: %v", err)
		}
	}
	if _, err := ParseKeys("alice"); !errors.Is(err, ErrBadClients) {
		t.Errorf("name without key: %v", err)
	}
}

// File content goes to Redis in chunks and comes back byte for byte;
// another tenant gets ErrNotFound; a file over the limit is refused and
// leaves nothing behind.
func TestStoreChunks(t *testing.T) {
	env := llmqtest.Redis(t)
	st := &store{rdb: env.Client, prefix: env.Prefix, fileTTL: time.Hour}
	ctx := context.Background()
	data := make([]byte, 2*ChunkBytes+12345)
	_, _ = rand.Read(data)
	f, err := st.putFile(ctx, "alice", "in.jsonl", PurposeBatch, bytes.NewReader(data), int64(len(data)), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.file(ctx, "alice", f.ID)
	if err != nil || rec.Chunks != 3 || f.Bytes != int64(len(data)) {
		t.Fatalf("record %+v, %v", rec, err)
	}
	content := st.content(ctx, rec)
	got, err := io.ReadAll(content)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content differs (%d bytes, %v)", len(got), err)
	}
	// It seeks: anywhere in a chunk, on a chunk's edge, from the end, back
	// to the start for a second pass.
	for _, at := range []struct {
		off    int64
		whence int
		want   int64
	}{{ChunkBytes + 7, io.SeekStart, ChunkBytes + 7}, {2 * ChunkBytes, io.SeekStart, 2 * ChunkBytes}, {-10, io.SeekEnd, int64(len(data)) - 10},
		{0, io.SeekStart, 0}, {int64(len(data)), io.SeekStart, int64(len(data))}} {
		pos, err := content.Seek(at.off, at.whence)
		if err != nil || pos != at.want {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d", at.off, at.whence, pos, err, at.want)
		}
		if cur, _ := content.Seek(0, io.SeekCurrent); cur != at.want {
			t.Fatalf("position %d after Seek to %d", cur, at.want)
		}
		got, err := io.ReadAll(content)
		if err != nil || !bytes.Equal(got, data[at.want:]) {
			t.Fatalf("after Seek(%d, %d): read %d bytes (%v), want %d", at.off, at.whence, len(got), err, len(data)-int(at.want))
		}
	}
	if _, err := content.Seek(-1, io.SeekStart); err == nil {
		t.Error("seek before the start: no error")
	}
	if _, err := st.file(ctx, "bob", f.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob reads alice's file: %v", err)
	}
	if _, err := st.putFile(ctx, "alice", "big", PurposeBatch, bytes.NewReader(data), int64(len(data))-1, time.Now()); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the limit: %v", err)
	}
	keys, _ := env.Client.Keys(ctx, env.Prefix+":api:file:*").Result()
	if len(keys) != 2 { // the first file's record and data
		t.Errorf("keys left: %v", keys)
	}
	ids, more, err := st.page(ctx, st.indexKey("alice", "files"), "", 10)
	if err != nil || more || len(ids) != 1 || ids[0] != f.ID {
		t.Errorf("index %v %v %v", ids, more, err)
	}
}

// A server whose claim on a batch lapses (a pause longer than the claim,
// another server took it) stops its work on the batch: the lock's context
// ends with errLockLost, and unlocking leaves the new holder's claim.
func TestLockLostEndsTheWork(t *testing.T) {
	env := llmqtest.Redis(t)
	s, err := New(Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []Client{{Name: "alice", Key: "sk-lock-test-key-0123456789"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.lockTTL = 3 * time.Second // renewed every second: a stalled -race run on 2 busy cores must not miss it
	ctx := context.Background()
	lctx, unlock, ok, err := s.lock(ctx, "b1")
	if err != nil || !ok {
		t.Fatalf("lock: %v %v", ok, err)
	}
	if _, _, ok, err := s.lock(ctx, "b1"); ok || err != nil {
		t.Fatalf("a second claim while held: %v %v", ok, err)
	}
	// Renewal keeps a live claim: it outlasts several TTLs.
	deadline := time.Now().Add(2 * s.lockTTL)
	for time.Now().Before(deadline) {
		if lctx.Err() != nil {
			t.Fatalf("the claim ended while held: %v", context.Cause(lctx))
		}
		time.Sleep(s.lockTTL / 10)
	}
	if err := env.Client.Set(ctx, s.st.lockKey("b1"), "other", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lctx.Done():
	case <-time.After(5 * s.lockTTL):
		t.Fatal("the work's context did not end when the claim was lost")
	}
	if !errors.Is(context.Cause(lctx), errLockLost) {
		t.Errorf("cause %v, want errLockLost", context.Cause(lctx))
	}
	unlock()
	if v, _ := env.Client.Get(ctx, s.st.lockKey("b1")).Result(); v != "other" {
		t.Errorf("unlock removed another server's claim: lock holds %q", v)
	}
}

// A server that cannot renew its claim (here its Redis client is closed:
// Redis unreachable) stops its work before the claim lapses in Redis, so
// no other server can claim the batch while this one still works on it:
// when the work's context ends, the claim is still there.
func TestLockWorkEndsBeforeTheClaimLapses(t *testing.T) {
	env := llmqtest.Redis(t)
	rdb := env.NewClient() // the server's own connection, cut below
	s, err := New(Config{Redis: rdb, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []Client{{Name: "alice", Key: "sk-lock-test-key-0123456789"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.lockTTL = 6 * time.Second // a margin of 1 s: far more than a PTTL's round trip, even on a loaded machine
	ctx := context.Background()
	lctx, unlock, ok, err := s.lock(ctx, "b1")
	if err != nil || !ok {
		t.Fatalf("lock: %v %v", ok, err)
	}
	defer unlock()
	if err := rdb.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lctx.Done():
	case <-time.After(5 * s.lockTTL): // a guard against a hang, not a timing
		t.Fatal("the work's context did not end when its claim could not be renewed")
	}
	ttl, err := env.Client.PTTL(ctx, s.st.lockKey("b1")).Result()
	if err != nil || ttl <= 0 {
		t.Fatalf("the claim had lapsed (PTTL %v, %v) when the work stopped: another server could have been working on the batch", ttl, err)
	}
	if !errors.Is(context.Cause(lctx), errLockLost) {
		t.Errorf("cause %v, want errLockLost", context.Cause(lctx))
	}
}
