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

// MaxBatchBytes bounds a batch ID.
const MaxBatchBytes = 128

// ValidateBatch reports whether id can name a batch: 1 to MaxBatchBytes
// bytes of printable UTF-8 without spaces (the key rules, shorter: it is a
// header value people type). The error never repeats the ID.
func ValidateBatch(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("batch id is empty")
	case len(id) > MaxBatchBytes:
		return fmt.Errorf("batch id is longer than %d bytes", MaxBatchBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf("batch id is not valid UTF-8")
	}
	for _, r := range id {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("batch id contains spaces or control characters")
		}
	}
	return nil
}

// BatchMeta is the batches bucket's key of a batch's record: its token.
func BatchMeta(id string) string { return Token(id) }

// BatchMembers is the KV filter of every member record of a batch.
func BatchMembers(id string) string { return Token(id) + ".m.>" }

// BatchMember is the batches bucket's key of one member (a request key) of
// a batch. The member keys have three tokens and the record's one, so a
// watch of "*" sees the records alone.
func BatchMember(id, key string) string { return Token(id) + ".m." + Token(key) }
