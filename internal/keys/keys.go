// Package keys owns idempotency keys: what a valid key is, the key derived
// for a request given none, and the token that names a key in NATS subjects
// and KV keys. The public client package re-exports them; the ledger and the
// queue use them directly, so every part of omicsq maps a key the same way.
package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxBytes bounds an idempotency key.
const MaxBytes = 256

// Validate reports whether k can serve as an idempotency key: 1 to MaxBytes
// bytes of printable UTF-8 without spaces. The error never repeats the key.
func Validate(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("idempotency key is empty")
	case len(k) > MaxBytes:
		return fmt.Errorf("idempotency key is longer than %d bytes", MaxBytes)
	case !utf8.ValidString(k):
		return fmt.Errorf("idempotency key is not valid UTF-8")
	}
	for _, r := range k {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("idempotency key contains spaces or control characters")
		}
	}
	return nil
}

// Derive returns the key of a request given none: a digest of its canonical
// JSON, so the same request always gets the same key.
func Derive(canonicalJSON []byte) string {
	sum := sha256.Sum256(canonicalJSON)
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// Token maps a key to 32 hex digits, safe in subjects and KV keys whatever
// characters the key holds.
func Token(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}
