package redisconn

import "errors"

// Errors an [*Error] wraps: what is wrong with the part it names.
var (
	// ErrUnsupported: the scheme, or a part in this form, is not supported.
	ErrUnsupported = errors.New("not supported")
	// ErrMissing: a required part is absent.
	ErrMissing = errors.New("missing")
	// ErrInvalid: a part is present but cannot be read.
	ErrInvalid = errors.New("invalid")
	// ErrUnknownOption: a query option llmq does not know.
	ErrUnknownOption = errors.New("unknown option")
)

// Error is a Redis URL that cannot be used. It names the part at fault and
// shows its value only when that value is not a secret.
type Error struct {
	// Part is the URL part at fault: "url", "scheme", "host", "port", "db",
	// "addr", "master_name", or a query option's name.
	Part string
	// Value is the offending value; empty for secrets and absent parts.
	Value string
	// Err is ErrUnsupported, ErrMissing, ErrInvalid or ErrUnknownOption.
	Err error
	// Detail says what would be accepted, or why not.
	Detail string
}

// Error reads like `redis url: db "x": invalid (want a number from 0)`.
func (e *Error) Error() string {
	s := "redis url: " + e.Part
	if e.Value != "" {
		s += " " + quote(e.Value)
	}
	s += ": " + e.Err.Error()
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Unwrap returns the kind of fault, for errors.Is.
func (e *Error) Unwrap() error { return e.Err }

// quote quotes v, cut to a readable length.
func quote(v string) string {
	const maxShown = 64
	if len(v) > maxShown {
		v = v[:maxShown] + "…"
	}
	return `"` + v + `"`
}
