package upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
)

// KeySource provides the API key. Implementations are safe for concurrent
// use, and never reveal the key through fmt, encoding/json or their errors.
type KeySource interface {
	// Key returns the current key, or an error wrapping ErrKey that says
	// which source to fix.
	Key() (string, error)
	// Refresh re-reads the key from its source now and reports whether it
	// differs from the key held before. The worker calls it once on a 401
	// before putting the fleet on hold.
	Refresh() (changed bool, err error)
	// Fingerprint identifies the current key without revealing it: the
	// first 8 hex digits of its SHA-256, or "" when there is no key. Workers
	// compare fingerprints to notice a key change fleet-wide.
	Fingerprint() string
}

// Fingerprint returns the short non-secret fingerprint of key: the first 8
// hex digits of its SHA-256, or "" for an empty key.
func Fingerprint(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

// checkKey rejects keys that are empty or could not be a header value.
func checkKey(key, source, fix string) error {
	if key == "" {
		return fmt.Errorf("%w: %s is empty: %s", ErrKey, source, fix)
	}
	for _, r := range key {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII {
			return fmt.Errorf("%w: %s holds whitespace or non-ASCII characters inside the key: %s", ErrKey, source, fix)
		}
	}
	return nil
}

// secret holds a key as a closure. Methods such as String are not called
// on unexported fields, so fmt prints any struct holding a key source raw,
// field by field; a func prints as an address, never as the key.
type secret func() string

func newSecret(key string) secret { return func() string { return key } }

func (s secret) value() string {
	if s == nil {
		return ""
	}
	return s()
}

// redacted is how every key source prints.
func redacted(kind, fp string) string {
	if fp == "" {
		return kind + "(empty)"
	}
	return kind + "(sha256:" + fp + ")"
}

// StaticKey returns a KeySource holding key. Refresh never changes it.
func StaticKey(key string) KeySource {
	return &staticKey{key: newSecret(key)}
}

type staticKey struct{ key secret }

func (k *staticKey) Key() (string, error) {
	key := k.key.value()
	if err := checkKey(key, "the static API key", "pass a valid key"); err != nil {
		return "", err
	}
	return key, nil
}

func (k *staticKey) Refresh() (bool, error) {
	_, err := k.Key()
	return false, err
}

func (k *staticKey) Fingerprint() string { return Fingerprint(k.key.value()) }

// String prints the fingerprint, never the key.
func (k *staticKey) String() string { return redacted("upstream.StaticKey", k.Fingerprint()) }

// GoString prints the fingerprint, never the key.
func (k *staticKey) GoString() string { return k.String() }

// Format prints the fingerprint for every verb, never the key.
func (k *staticKey) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// MarshalJSON encodes the fingerprint, never the key.
func (k *staticKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// FileKey returns a KeySource that reads the key from the file at path
// (surrounding whitespace trimmed). Key re-reads the file whenever its
// modification time or size changed since the last read, so a rotated key
// is picked up by the next call; Refresh re-reads it unconditionally.
func FileKey(path string) KeySource {
	return &fileKey{path: path}
}

type fileKey struct {
	path string

	mu      sync.Mutex
	loaded  bool
	key     secret
	modTime time.Time
	size    int64
}

func (k *fileKey) source() string { return "the API key file " + k.path }

func (k *fileKey) Key() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fi, err := os.Stat(k.path)
	if err != nil {
		return "", fmt.Errorf("%w: stat %s: %w", ErrKey, k.source(), err)
	}
	if k.loaded && fi.ModTime().Equal(k.modTime) && fi.Size() == k.size {
		if err := checkKey(k.key.value(), k.source(), "write the key into the file"); err != nil {
			return "", err
		}
		return k.key.value(), nil
	}
	if _, err := k.readLocked(); err != nil {
		return "", err
	}
	return k.key.value(), nil
}

// readLocked reads the file and reports whether the key changed.
func (k *fileKey) readLocked() (bool, error) {
	f, err := os.Open(k.path)
	if err != nil {
		return false, fmt.Errorf("%w: open %s: %w", ErrKey, k.source(), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("%w: stat %s: %w", ErrKey, k.source(), err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return false, fmt.Errorf("%w: read %s: %w", ErrKey, k.source(), err)
	}
	key := strings.TrimSpace(string(b))
	changed := !k.loaded || key != k.key.value()
	k.loaded, k.key, k.modTime, k.size = true, newSecret(key), fi.ModTime(), fi.Size()
	if err := checkKey(key, k.source(), "write the key into the file"); err != nil {
		return changed, err
	}
	return changed, nil
}

func (k *fileKey) Refresh() (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	changed, err := k.readLocked()
	if err != nil {
		return false, err
	}
	return changed, nil
}

func (k *fileKey) Fingerprint() string {
	key, err := k.Key()
	if err != nil {
		return ""
	}
	return Fingerprint(key)
}

// String prints the path and the fingerprint, never the key.
func (k *fileKey) String() string {
	k.mu.Lock()
	fp := Fingerprint(k.key.value())
	k.mu.Unlock()
	return redacted("upstream.FileKey "+k.path+" ", fp)
}

// GoString prints the path and the fingerprint, never the key.
func (k *fileKey) GoString() string { return k.String() }

// Format prints the path and the fingerprint for every verb, never the key.
func (k *fileKey) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// MarshalJSON encodes the path and the fingerprint, never the key.
func (k *fileKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }
