// Package jsonscan checks compact JSON text without decoding it, for the
// fast paths that skip encoding/json when a value is of the usual form.
// It is conservative: it accepts only text that encoding/json reads as
// valid, and nothing with whitespace between tokens; a caller falls back
// to encoding/json for whatever it refuses.
package jsonscan

// MaxDepth bounds the nesting Value follows; deeper text is refused (and
// left to encoding/json, which knows its own limit).
const MaxDepth = 1000

// Options say what Value refuses beyond invalid or non-compact text.
type Options struct {
	// HTMLSafe refuses '<', '>', '&', U+2028 and U+2029 anywhere (the
	// characters json.Marshal escapes in a json.RawMessage), so that
	// accepted text is what json.Marshal writes for it.
	HTMLSafe bool
}

// Value checks the compact JSON value at b[i:] and returns where it ends.
// Bytes that are not UTF-8 inside strings are accepted, as encoding/json
// accepts them.
func Value(b []byte, i int, o Options) (int, bool) {
	return value(b, i, 0, o)
}

func value(b []byte, i, depth int, o Options) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		return String(b, i, o)
	case c == '{':
		return container(b, i, depth, '}', o)
	case c == '[':
		return container(b, i, depth, ']', o)
	case c == '-' || c >= '0' && c <= '9':
		return Number(b, i)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	}
	return i, false
}

// container checks the object or array opening at b[i]; closer is '}' or
// ']'.
func container(b []byte, i, depth int, closer byte, o Options) (int, bool) {
	if depth >= MaxDepth {
		return i, false
	}
	i++
	if i < len(b) && b[i] == closer {
		return i + 1, true
	}
	for {
		var ok bool
		if closer == '}' {
			if i >= len(b) || b[i] != '"' {
				return i, false
			}
			if i, ok = String(b, i, o); !ok || i >= len(b) || b[i] != ':' {
				return i, false
			}
			i++
		}
		if i, ok = value(b, i, depth+1, o); !ok || i >= len(b) {
			return i, false
		}
		switch b[i] {
		case ',':
			i++
		case closer:
			return i + 1, true
		default:
			return i, false
		}
	}
}

// String checks the JSON string opening at b[i] and returns where it ends.
func String(b []byte, i int, o Options) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case o.HTMLSafe && (c == '<' || c == '>' || c == '&'):
			return i, false
		case o.HTMLSafe && c == 0xE2 && i+2 < len(b) && b[i+1] == 0x80 && b[i+2]&^1 == 0xA8: // U+2028, U+2029
			return i, false
		case c == '\\':
			i++
			if i >= len(b) {
				return i, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return i, false
				}
				i += 4
			default:
				return i, false
			}
		}
	}
	return i, false
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// Number checks the JSON number at b[i:],
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, and returns where it
// ends.
func Number(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

// Integer reports whether b is exactly a JSON number without fraction or
// exponent: -?(0|[1-9][0-9]*).
func Integer(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return false
	}
	return i == len(b)
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func literal(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// Members calls fn with the raw key (without quotes; escapes left as they
// are) and raw value (capped: appending to it copies) of each member of the compact JSON object b, in
// order, and reports whether b is one valid compact object. fn returning
// false stops it (reported as false).
func Members(b []byte, o Options, fn func(key, value []byte) bool) bool {
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	i := 1
	if b[i] == '}' {
		return len(b) == 2
	}
	for {
		k := i
		var ok bool
		if i, ok = String(b, i, o); !ok || i >= len(b) || b[i] != ':' {
			return false
		}
		key := b[k+1 : i-1 : i-1]
		v := i + 1
		if i, ok = value(b, v, 1, o); !ok || i >= len(b) {
			return false
		}
		if !fn(key, b[v:i:i]) {
			return false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return i+1 == len(b)
		default:
			return false
		}
	}
}

// Elements calls fn with each raw element (capped) of the compact JSON array b, in
// order, and reports whether b is one valid compact array. fn returning
// false stops it (reported as false).
func Elements(b []byte, o Options, fn func(value []byte) bool) bool {
	if len(b) < 2 || b[0] != '[' {
		return false
	}
	i := 1
	if b[i] == ']' {
		return len(b) == 2
	}
	for {
		v := i
		var ok bool
		if i, ok = value(b, v, 1, o); !ok || i >= len(b) {
			return false
		}
		if !fn(b[v:i:i]) {
			return false
		}
		switch b[i] {
		case ',':
			i++
		case ']':
			return i+1 == len(b)
		default:
			return false
		}
	}
}
