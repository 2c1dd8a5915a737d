package jsonscan_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/llmq/llmq/internal/jsonscan"
)

// whole reports whether b is one value that Value accepts.
func whole(b []byte, o jsonscan.Options) bool {
	end, ok := jsonscan.Value(b, 0, o)
	return ok && end == len(b)
}

// Value accepts exactly the compact JSON encoding/json accepts (below
// MaxDepth); with HTMLSafe, exactly what json.Marshal writes unchanged.
func FuzzValue(f *testing.F) {
	for _, s := range []string{`{"a":[1,-0.5e+3,"x\u00e9\n",true,false,null,{}]}`, `{"a": 1}`, `"<"`, "\"\u2028\"", "\"\xff\"", `01`, `[1,]`, `{"a"}`, `"\x"`, `-`, `1.`, `1e`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var compact bytes.Buffer
		valid := json.Compact(&compact, b) == nil
		want := valid && bytes.Equal(compact.Bytes(), b)
		deep := bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) >= jsonscan.MaxDepth // may be refused
		if got := whole(b, jsonscan.Options{}); got && !want || !got && want && !deep {
			t.Fatalf("Value(%q) = %v; encoding/json: valid %v, compact %q", b, got, valid, compact.Bytes())
		}
		if whole(b, jsonscan.Options{HTMLSafe: true}) {
			out, err := json.Marshal(json.RawMessage(b))
			if err != nil || !bytes.Equal(out, b) {
				t.Fatalf("HTML-safe %q: json.Marshal writes %q, %v", b, out, err)
			}
		}
	})
}

func TestMembersAndElements(t *testing.T) {
	var keys, vals []string
	ok := jsonscan.Members([]byte(`{"a":1,"b\"":[2,{"c":3}],"":null}`), jsonscan.Options{}, func(k, v []byte) bool {
		keys, vals = append(keys, string(k)), append(vals, string(v))
		return true
	})
	if !ok || len(keys) != 3 || keys[1] != `b\"` || vals[1] != `[2,{"c":3}]` || keys[2] != "" || vals[2] != "null" {
		t.Fatalf("Members: %v %q %q", ok, keys, vals)
	}
	for _, bad := range []string{`{"a":1}x`, `{"a":1,}`, `{"a" :1}`, `[1]`, `{`, `{}}`} {
		if jsonscan.Members([]byte(bad), jsonscan.Options{}, func(_, _ []byte) bool { return true }) {
			t.Errorf("Members accepts %q", bad)
		}
	}
	n := 0
	if !jsonscan.Elements([]byte(`[1,"a",[],{}]`), jsonscan.Options{}, func([]byte) bool { n++; return true }) || n != 4 {
		t.Fatalf("Elements: %d elements", n)
	}
	if jsonscan.Elements([]byte(`[1,2]`), jsonscan.Options{}, func([]byte) bool { return false }) {
		t.Fatal("Elements ignores fn's stop")
	}
	for _, s := range []string{"0", "-12", "7"} {
		if !jsonscan.Integer([]byte(s)) {
			t.Errorf("Integer(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-", "01", "1.0", "1e3", " 1"} {
		if jsonscan.Integer([]byte(s)) {
			t.Errorf("Integer(%q) = true", s)
		}
	}
}
