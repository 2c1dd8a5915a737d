package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStaticKey(t *testing.T) {
	k := StaticKey("sk-static-123456")
	got, err := k.Key()
	if err != nil || got != "sk-static-123456" {
		t.Fatalf("Key() = %q, %v", got, err)
	}
	if changed, err := k.Refresh(); changed || err != nil {
		t.Fatalf("Refresh() = %v, %v; a static key never changes", changed, err)
	}
	if fp := k.Fingerprint(); len(fp) != 8 || fp != Fingerprint("sk-static-123456") || fp == Fingerprint("sk-other") {
		t.Fatalf("Fingerprint() = %q", fp)
	}

	_, err = StaticKey("").Key()
	if !errors.Is(err, ErrKey) || strings.Contains(err.Error(), "OPENAI_API_KEY") {
		t.Fatalf("empty static key: %v; want ErrKey without CLI hints", err)
	}
	if _, err := StaticKey("sk-two\nlines").Key(); !errors.Is(err, ErrKey) {
		t.Fatalf("a key with a newline must be refused (header injection): %v", err)
	}
}

// writeKey writes key to path and sets its mtime, so tests control what
// the change detection sees.
func writeKey(t *testing.T, path, key string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestFileKeyRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	writeKey(t, path, "  sk-first-aaaa\n", t0)
	k := FileKey(path)

	if got, err := k.Key(); err != nil || got != "sk-first-aaaa" {
		t.Fatalf("Key() = %q, %v; want the trimmed file content", got, err)
	}
	fp1 := k.Fingerprint()

	// Rotation with a new mtime (same size) is picked up by Key.
	writeKey(t, path, "sk-second-bbb\n", t0.Add(time.Second))
	if got, _ := k.Key(); got != "sk-second-bbb" {
		t.Fatalf("after rotation Key() = %q, want sk-second-bbb", got)
	}
	if k.Fingerprint() == fp1 {
		t.Fatalf("fingerprint did not change with the key")
	}

	// Same size, same mtime: Key keeps the cached value; Refresh forces
	// the read and reports the change.
	writeKey(t, path, "sk-third-cccc\n", t0.Add(time.Second))
	if got, _ := k.Key(); got != "sk-second-bbb" {
		t.Fatalf("Key() = %q; an unchanged stat must not re-read", got)
	}
	if changed, err := k.Refresh(); !changed || err != nil {
		t.Fatalf("Refresh() = %v, %v; want changed", changed, err)
	}
	if got, _ := k.Key(); got != "sk-third-cccc" {
		t.Fatalf("after Refresh Key() = %q", got)
	}
	if changed, err := k.Refresh(); changed || err != nil {
		t.Fatalf("second Refresh() = %v, %v; want unchanged", changed, err)
	}

	// Empty file and missing file name the path to fix.
	writeKey(t, path, " \n", t0.Add(2*time.Second))
	if _, err := k.Key(); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), path) {
		t.Fatalf("empty file: %v; want ErrKey naming %s", err, path)
	}
	if _, err := k.Refresh(); !errors.Is(err, ErrKey) {
		t.Fatalf("Refresh on empty file: %v", err)
	}
	if k.Fingerprint() != "" {
		t.Fatalf("no key, but a fingerprint")
	}
	missing := filepath.Join(t.TempDir(), "absent")
	_, err := FileKey(missing).Key()
	if !errors.Is(err, ErrKey) || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing file: %v; want ErrKey and ErrNotExist naming the path", err)
	}
}

// TestKeyNeverPrinted formats every value that holds a key with every
// common verb and looks for the key in the output.
func TestKeyNeverPrinted(t *testing.T) {
	const secret = "sk-live-SECRET-0123456789"
	path := filepath.Join(t.TempDir(), "key")
	writeKey(t, path, secret, time.Now())
	fk := FileKey(path)
	if _, err := fk.Key(); err != nil {
		t.Fatal(err)
	}
	for _, src := range []KeySource{StaticKey(secret), fk} {
		cfg := Config{BaseURL: "http://127.0.0.1:1", Key: src, Azure: &Azure{}}
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(cfg)
		values := []any{cfg, &cfg, src, c, *c, struct{ K KeySource }{src}}
		var out strings.Builder
		out.Write(js)
		for _, v := range values {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
				fmt.Fprintf(&out, verb+"\n", v)
			}
		}
		if strings.Contains(out.String(), secret) || strings.Contains(out.String(), fmt.Sprintf("%x", secret)) {
			t.Fatalf("key leaked when formatting %T:\n%s", src, out.String())
		}
		if !strings.Contains(out.String(), src.Fingerprint()) {
			t.Fatalf("formatting should show the fingerprint %s:\n%s", src.Fingerprint(), out.String())
		}
	}
}
