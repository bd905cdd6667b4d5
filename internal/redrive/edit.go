package redrive

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/omicsq/omicsq/internal/submit"
)

// Edit is one Field=Value change to a dead letter's request.
type Edit struct {
	parent, field string // parent is "" for top-level fields
	value         json.RawMessage
	remove        bool
}

// ParseEdit parses Field=Value. Value is JSON when it is valid JSON, else a
// string; null removes the field. The field must be a request field (or, to
// remove an unknown top-level field, any name with the value null).
func ParseEdit(s string) (Edit, error) {
	name, val, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return Edit{}, errors.New("--set wants Field=Value")
	}
	var e Edit
	if v := []byte(val); json.Valid(v) {
		e.value = json.RawMessage(bytes.TrimSpace(v))
	} else {
		b, _ := json.Marshal(val)
		e.value = b
	}
	e.remove = string(e.value) == "null"
	if parent, field, nested := strings.Cut(name, "."); nested {
		e.parent, e.field = parent, field
	} else {
		e.field = name
	}
	if _, known := submit.RequestFields[name]; !known && !(e.remove && e.parent == "") {
		return Edit{}, fmt.Errorf("--set: %s is not a RunApplication field (nested fields are Option.X and NFOption.X; Field=null removes an unknown top-level field)", submit.SafeFieldName(name))
	}
	return e, nil
}

// Apply returns request with the edits applied. Without edits the request
// is returned unchanged, so strict validation sees the original.
func Apply(request json.RawMessage, edits []Edit) ([]byte, error) {
	if len(edits) == 0 {
		return request, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(request, &top); err != nil || top == nil {
		return nil, errors.New("the dead letter's request is not a JSON object")
	}
	for _, e := range edits {
		if e.parent == "" {
			if e.remove {
				delete(top, e.field)
			} else {
				top[e.field] = e.value
			}
			continue
		}
		if err := applyNested(top, e); err != nil {
			return nil, err
		}
	}
	return json.Marshal(top)
}

func applyNested(top map[string]json.RawMessage, e Edit) error {
	sub := map[string]json.RawMessage{}
	if raw, ok := top[e.parent]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &sub); err != nil {
			return fmt.Errorf("%s is not an object", e.parent)
		}
	}
	if e.remove {
		delete(sub, e.field)
	} else {
		sub[e.field] = e.value
	}
	if len(sub) == 0 {
		delete(top, e.parent)
		return nil
	}
	b, err := json.Marshal(sub)
	if err != nil {
		return err
	}
	top[e.parent] = b
	return nil
}
