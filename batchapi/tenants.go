package batchapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Client is one tenant of the API: a name (its objects' owner, its queue's
// suffix) and its key.
type Client struct {
	Name string
	Key  string
}

// ErrNoClients is returned when no client key is configured: the server
// refuses to start rather than serve anyone.
var ErrNoClients = errors.New("no client key configured")

// ErrBadClients is matched by every problem with the client list.
var ErrBadClients = errors.New("invalid client keys")

var tenantName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// MinKeyLength is the shortest client key accepted.
const MinKeyLength = 16

// ParseKeys reads "name:key,name:key". Errors never quote a key.
func ParseKeys(s string) ([]Client, error) {
	var out []Client
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, key, ok := strings.Cut(part, ":")
		if !ok {
			return nil, fmt.Errorf("%w: entry %d is not name:key", ErrBadClients, i+1)
		}
		out = append(out, Client{Name: strings.TrimSpace(name), Key: strings.TrimSpace(key)})
	}
	return out, nil
}

// ReadKeyFile reads a client's key from a file (surrounding blanks
// trimmed).
func ReadKeyFile(name, path string) (Client, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Client{}, fmt.Errorf("%w: client %q: read key file: %w", ErrBadClients, name, err)
	}
	return Client{Name: name, Key: strings.TrimSpace(string(b))}, nil
}

// checkClients validates the client list: names usable as queue suffixes,
// unique names and keys, keys long enough.
func checkClients(cs []Client) error {
	if len(cs) == 0 {
		return ErrNoClients
	}
	names := map[string]bool{}
	keys := map[string]string{}
	for _, c := range cs {
		switch {
		case !tenantName.MatchString(c.Name):
			return fmt.Errorf("%w: client name %q: use 1 to 64 letters, digits, '-' or '_'", ErrBadClients, c.Name)
		case names[c.Name]:
			return fmt.Errorf("%w: client %q is configured twice", ErrBadClients, c.Name)
		case len(c.Key) < MinKeyLength:
			return fmt.Errorf("%w: client %q: key shorter than %d characters", ErrBadClients, c.Name, MinKeyLength)
		}
		if other, ok := keys[c.Key]; ok {
			return fmt.Errorf("%w: clients %q and %q share a key", ErrBadClients, other, c.Name)
		}
		names[c.Name], keys[c.Key] = true, c.Name
	}
	return nil
}

// TenantQueue is the asynq queue of a tenant's batch jobs. Workers serve
// every tenant's queue with the same weight, so tenants with backlogs at
// the same time share the budget evenly.
func TenantQueue(base, tenant string) string { return base + "-" + tenant }

// keyring finds the tenant of a bearer key in constant time.
type keyring struct {
	names  []string
	hashes [][sha256.Size]byte
}

func newKeyring(cs []Client) *keyring {
	k := &keyring{}
	for _, c := range cs {
		k.names = append(k.names, c.Name)
		k.hashes = append(k.hashes, sha256.Sum256([]byte(c.Key)))
	}
	return k
}

// tenant returns the name whose key is key. It compares against every key
// (hashes of equal length, constant time), so the time taken tells nothing
// about which key, or how much of one, matched.
func (k *keyring) tenant(key string) (string, bool) {
	h := sha256.Sum256([]byte(key))
	found := -1
	for i := range k.hashes {
		if subtle.ConstantTimeCompare(h[:], k.hashes[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 || key == "" {
		return "", false
	}
	return k.names[found], true
}
