package breaker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// DefaultActor is who an operator's decision is recorded as (Config.Actor)
// when not told: user@host, as far as they are known.
func DefaultActor(getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = "operator"
	}
	if host, err := os.Hostname(); err == nil && host != "" {
		return user + "@" + host
	}
	return user
}

// ParseEdits parses the --set Field=Value edits of a release into the
// edits Release takes, checked with ValidateEdits. A Value that is a JSON
// string is unquoted (as a dlq redrive reads it), anything else is taken as
// it is; a field may be set once.
func ParseEdits(sets []string) (map[string]string, error) {
	edits := map[string]string{}
	for _, s := range sets {
		field, value, ok := strings.Cut(s, "=")
		field = strings.TrimSpace(field)
		if !ok || field == "" {
			return nil, errors.New("--set wants Field=Value")
		}
		if strings.HasPrefix(value, `"`) {
			var v string
			if json.Unmarshal([]byte(value), &v) == nil {
				value = v
			}
		}
		if _, dup := edits[field]; dup {
			return nil, fmt.Errorf("--set %s given twice", field)
		}
		edits[field] = value
	}
	if err := ValidateEdits(edits); err != nil {
		return nil, fmt.Errorf("--set: %s", strings.TrimPrefix(err.Error(), ErrInvalidEdit.Error()+": "))
	}
	return edits, nil
}
